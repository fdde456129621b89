/// On musl (the router builds), dlmalloc instead of musl's malloc: see the
/// note in Cargo.toml.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    std::process::exit(mxspool::cli::main(std::env::args().skip(1).collect()));
}
