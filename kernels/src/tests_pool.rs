//! The pool runs every task exactly once, also when calls follow each other closely or its
//! workers sleep, and hands a task's panic to the caller.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::{Parallel, ThreadPool};

#[test]
fn every_task_runs_once_across_many_calls() {
    let pool = ThreadPool::new(3);
    for round in 0..2_000usize {
        let tasks = round % 37;
        let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
        pool.for_each(tasks, &|i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "round {round}");
        if round % 500 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // let the workers fall asleep
        }
    }
}

#[test]
fn workers_take_part() {
    let pool = ThreadPool::new(2);
    let caller = std::thread::current().id();
    let elsewhere = AtomicUsize::new(0);
    for _ in 0..200 {
        pool.for_each(64, &|_| {
            std::thread::sleep(Duration::from_micros(20));
            if std::thread::current().id() != caller {
                elsewhere.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    assert!(elsewhere.load(Ordering::Relaxed) > 0, "no task ever ran on a worker");
}

#[test]
fn a_panicking_task_reaches_the_caller_and_the_pool_goes_on() {
    let pool = ThreadPool::new(2);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.for_each(16, &|i| {
            std::thread::sleep(Duration::from_micros(50));
            assert!(i != 7, "task 7 fails");
        })
    }));
    assert!(result.is_err());
    let ran = AtomicUsize::new(0);
    pool.for_each(16, &|_| {
        ran.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(ran.load(Ordering::Relaxed), 16);
}
