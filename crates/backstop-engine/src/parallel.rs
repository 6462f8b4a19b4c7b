//! Work that reads the state only, spread over the machine's cores (the end of a replay: the ADL views of every
//! symbol's sides, the pieces of accounts.json). Results come back in the order of their indices, so what is
//! written never depends on how the work was split or which thread finished first.

use std::panic::resume_unwind;

/// How many threads `map` uses at most: the cores this process may run on.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get())
}

/// `work(0)`, …, `work(count - 1)` in that order, computed on up to `threads` scoped threads (this one among them:
/// index i on thread i mod threads). A panic in any of them is raised again here.
pub fn map<T: Send>(count: usize, threads: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, count.max(1));
    if threads == 1 {
        return (0..count).map(work).collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map(|first| {
                std::thread::Builder::new()
                    .name("backstop-parallel".to_string())
                    .spawn_scoped(scope, move || (first..count).step_by(threads).map(work).collect::<Vec<T>>())
                    .expect("a helper thread")
            })
            .collect();
        let mut columns: Vec<std::vec::IntoIter<T>> = Vec::with_capacity(threads);
        columns.push((0..count).step_by(threads).map(work).collect::<Vec<T>>().into_iter());
        for helper in helpers {
            columns.push(helper.join().unwrap_or_else(|panic| resume_unwind(panic)).into_iter());
        }
        (0..count).map(|index| columns[index % threads].next().expect("a result per index")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_index_order_however_many_threads() {
        for threads in [1, 2, 3, 8] {
            for count in [0, 1, 2, 5, 17] {
                assert_eq!(map(count, threads, |index| index * index), (0..count).map(|i| i * i).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_panic_in_a_helper_is_raised_again() {
        let caught = std::panic::catch_unwind(|| map(4, 2, |index| if index == 3 { panic!("piece 3") } else { index }));
        let panic = caught.unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"piece 3"));
    }
}
