//! `otlens`: the companion binary. Imports models, builds catalog indexes, serves the demo.

use clap::{Parser, Subcommand};
use otlens::cli;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a PyTorch checkpoint into an ONNX embedding model (fp32 and int8).
    Import(cli::import::Args),
    /// Compile an ONNX embedding model into the file the widget runs (NNEF, gzipped).
    Compile(cli::compile::Args),
    /// Print the embedding of one photo as JSON.
    Embed(cli::embed::Args),
    /// Embed a catalog's photos and write the index, thumbnails and manifest.
    BuildIndex(cli::build_index::Args),
    /// Build a demo catalog from a public dataset.
    Demo(cli::demo::Args),
    /// Train a retrieval head on photos of products and write it into the model.
    Train(cli::train::Args),
    /// Recall@K and mAP@R of models on a query/gallery split, as a Markdown report.
    Eval(cli::eval::Args),
    /// Recall@10, bytes per product and speed of each index codec on a split's embeddings.
    BenchIndex(cli::bench_index::Args),
    /// Serve a folder over HTTP on 127.0.0.1 (for the demo and the tests).
    Serve(cli::serve::Args),
}

fn main() -> std::process::ExitCode {
    // Print the error chain as one readable line, never a backtrace: these messages are for shop engineers.
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("otlens: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Import(args) => cli::import::run(args),
        Command::Compile(args) => cli::compile::run(args),
        Command::Embed(args) => cli::embed::run(args),
        Command::BuildIndex(args) => cli::build_index::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Train(args) => cli::train::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::BenchIndex(args) => cli::bench_index::run(args),
        Command::Serve(args) => cli::serve::run(args),
    }
}
