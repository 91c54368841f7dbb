//! `ringshim-stackd`: parse the flags, open the device (TAP or AF_PACKET), serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use ringshim_stackd::config::{self, Parsed};
use ringshim_stackd::stack::Stack;

fn main() -> ExitCode {
    let config = match config::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Help) => {
            println!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let mut stack = match Stack::new(config) {
        Ok(stack) => stack,
        Err(err) => {
            eprintln!("ringshim-stackd: {err}");
            return ExitCode::FAILURE;
        }
    };
    match stack.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringshim-stackd: stopped: {err}");
            ExitCode::FAILURE
        }
    }
}
