//! `palisade`: the binary is the library's entry point and nothing else (see `lib.rs`).
fn main() -> std::process::ExitCode {
    palisade::main()
}
