//! Running a varying number of futures of one task at once (one per backend
//! of an LMTP transaction) and collecting their outputs in order.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

/// Runs every future in `futures` concurrently on the current task and
/// returns their outputs in the order the futures were given.
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut running: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::block_on;
    use std::cell::RefCell;
    use std::time::Duration;

    #[test]
    fn outputs_come_in_the_order_given_and_futures_overlap() {
        block_on(async {
            // The first future can only finish once the second has run:
            // awaited one after another they would never end.
            let (tx, rx) = local_sync::oneshot::channel::<u32>();
            let tx = RefCell::new(Some(tx));
            let waits = async { rx.await.unwrap_or(0) + 1 };
            let sends = async {
                if let Some(tx) = tx.borrow_mut().take() {
                    let _ = tx.send(41);
                }
                7
            };
            let both: Vec<Pin<Box<dyn Future<Output = u32>>>> =
                vec![Box::pin(waits), Box::pin(sends)];
            let out = monoio::time::timeout(Duration::from_secs(5), join_all(both)).await;
            assert_eq!(out.ok(), Some(vec![42, 7]));
            assert!(join_all(Vec::<std::future::Ready<u8>>::new())
                .await
                .is_empty());
        });
    }
}
