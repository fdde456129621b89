/// On musl (the router builds), dlmalloc instead of musl's malloc: see the
/// note in Cargo.toml.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: heap::Heap = heap::Heap::new();

fn main() {
    std::process::exit(mxspool::cli::main(std::env::args().skip(1).collect()));
}

#[cfg(target_env = "musl")]
mod heap {
    //! dlmalloc behind std's futex mutex. The crate's own global lock is a
    //! pthread mutex, and musl's pthread_mutex_unlock alone was 5% of all
    //! instructions (an accepted 4 KiB message makes ~190 allocations).

    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    struct Dl(dlmalloc::Dlmalloc);

    // SAFETY: the heap's raw pointers are only ever used under the mutex.
    unsafe impl Send for Dl {}

    pub struct Heap(Mutex<Dl>);

    impl Heap {
        pub const fn new() -> Heap {
            Heap(Mutex::new(Dl(dlmalloc::Dlmalloc::new())))
        }

        fn lock(&self) -> MutexGuard<'_, Dl> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    // SAFETY: every call goes to dlmalloc with the layout it was given,
    // one thread at a time.
    unsafe impl GlobalAlloc for Heap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { self.lock().0.malloc(layout.size(), layout.align()) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            unsafe { self.lock().0.calloc(layout.size(), layout.align()) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { self.lock().0.free(ptr, layout.size(), layout.align()) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            unsafe {
                self.lock()
                    .0
                    .realloc(ptr, layout.size(), layout.align(), new_size)
            }
        }
    }
}
