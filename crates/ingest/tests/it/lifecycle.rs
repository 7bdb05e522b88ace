//! Shutdown: the batch in hand is committed and acknowledged before the service stops.

use metrics_test_support::{TestBroker, TestDatabase, eventually};

use crate::support::{DEADLINE, Running, declare, rows, settings, wait_for_rows, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_settles_the_batch_in_hand() {
    let database = TestDatabase::migrated();
    let broker = TestBroker::new().await;
    let mut settings = settings(&database, &broker);
    // A batch that only a shutdown can close: it waits a minute to fill.
    settings.amqp.prefetch = 500;
    settings.batch.memory_bytes = 500 * settings.limits.max_body_bytes;
    settings.batch.size = 500;
    settings.batch.wait_ms = 60_000;
    declare(&broker, &settings).await;
    let service = Running::start(settings).await;

    let (bodies, expected) = workload(30);
    broker
        .publish_all("agentos.run.completed", bodies.iter().map(Vec::as_slice))
        .await;
    // Every message delivered (none ready in the queue) and none written: all in hand.
    eventually(DEADLINE, || async {
        let ready = broker.ready_count(broker.queue()).await;
        if ready == 0 { Ok(()) } else { Err(ready) }
    })
    .await;
    assert_eq!(rows(&database).await, []);

    service.stop().await;
    wait_for_rows(&database, &expected).await;
    // Acknowledged, not returned to the queue when the channel closed.
    assert_eq!(broker.ready_count(broker.queue()).await, 0);
    broker.cleanup().await;
}
