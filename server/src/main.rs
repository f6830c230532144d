//! `tritium`: the command-line entry point (the command line itself is [`tritium_server::cli`]).

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands the memory this thread freed back to the system. mimalloc keeps a thread's freed pages
/// for that thread until it allocates again; a blocking-pool thread that tokenized a long prompt
/// may then idle for seconds (tokio ends it after 10), holding hundreds of megabytes.
fn reclaim_freed_memory() {
    // SAFETY: mi_collect only walks and releases mimalloc's own free lists; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

fn main() -> ExitCode {
    tritium_openai_bridge::preprocess::set_reclaim(reclaim_freed_memory);
    tritium_server::cli::run(std::env::args_os())
}
