fn main() {
    std::process::exit(mxspool::cli::main(std::env::args().skip(1).collect()));
}
