fn main() -> std::process::ExitCode {
    stepstone::cli::main()
}
