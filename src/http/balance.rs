//! Which HTTP runtime serves a new connection: the one with the fewest open.
//!
//! Each HTTP thread accepts on its own SO_REUSEPORT listener, and the kernel picks the
//! listener by a hash of the connection's addresses. An app server keeps only a few
//! connections (one HTTP/2 connection carries all its requests), so the hash alone often
//! puts all of them on one thread while another idles: with 4 connections and 2 threads,
//! 3 or 4 of them in 5 cases of 8. A thread that accepts a connection while another runtime
//! serves fewer hands it over (its socket leaves this runtime's reactor and joins that one's).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::runtime::Handle;

/// One HTTP runtime: its handle once its thread has started, and its open connections.
#[derive(Default)]
struct Runtime {
    handle: OnceLock<Handle>,
    open: AtomicUsize,
}

/// Every HTTP runtime of the node (the HTTP and the HTTPS listeners' alike).
pub struct Runtimes {
    runtimes: Vec<Runtime>,
}

/// Counts one connection on runtime `index` while it lives.
struct OpenConnection {
    runtimes: Arc<Runtimes>,
    index: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let before = self.runtimes.runtimes[self.index].open.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "HTTP runtime {}: a connection closed that was not counted", self.index);
    }
}

impl Runtimes {
    pub fn new(count: usize) -> Arc<Self> {
        assert!(count > 0, "at least one HTTP runtime");
        Arc::new(Runtimes { runtimes: (0..count).map(|_| Runtime::default()).collect() })
    }

    /// Runtime `index` is up: called on its thread, inside it.
    pub fn started(&self, index: usize) {
        let set = self.runtimes[index].handle.set(Handle::current());
        assert!(set.is_ok(), "HTTP runtime {index} started twice");
    }

    /// Serves a connection accepted on runtime `here` with `serve` on the started runtime
    /// that has the fewest connections open (`here` when none has fewer). `serve` gets the
    /// socket once it belongs to that runtime.
    pub fn serve<F, Fut>(self: &Arc<Self>, here: usize, stream: tokio::net::TcpStream, serve: F)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fewest = self.fewest_open(here);
        self.runtimes[fewest].open.fetch_add(1, Ordering::Relaxed);
        let open = OpenConnection { runtimes: self.clone(), index: fewest };
        if fewest == here {
            tokio::spawn(async move {
                let _open = open;
                serve(stream).await
            });
            return;
        }
        let handle = self.runtimes[fewest].handle.get().expect("fewest_open picks started runtimes");
        match stream.into_std() {
            Ok(std_stream) => {
                handle.spawn(async move {
                    let _open = open;
                    match tokio::net::TcpStream::from_std(std_stream) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => tracing::warn!(error = %e, "moving an HTTP connection between runtimes failed"),
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "moving an HTTP connection between runtimes failed"),
        }
    }

    /// The started runtime with the fewest open connections, `here` on a tie.
    fn fewest_open(&self, here: usize) -> usize {
        let open = |i: usize| self.runtimes[i].open.load(Ordering::Relaxed);
        let mut best = here;
        for (i, runtime) in self.runtimes.iter().enumerate() {
            if runtime.handle.get().is_some() && open(i) < open(best) {
                best = i;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime_thread(
        runtimes: Arc<Runtimes>,
        index: usize,
    ) -> (std::thread::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                runtimes.started(index);
                up_tx.send(()).unwrap();
                let _ = stopped.await;
            });
        });
        up_rx.recv().unwrap();
        (thread, stop)
    }

    #[test]
    fn connections_go_to_the_runtime_with_the_fewest_and_are_served_there() {
        let runtimes = Runtimes::new(2);
        let (other, stop_other) = runtime_thread(runtimes.clone(), 1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            runtimes.started(0);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (mut clients, mut threads) = (Vec::new(), std::collections::HashSet::new());
            let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
            for _ in 0..4 {
                clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
                let (stream, _) = listener.accept().await.unwrap();
                let served = served_tx.clone();
                runtimes.serve(0, stream, move |mut stream| async move {
                    use tokio::io::AsyncWriteExt;
                    let thread = std::thread::current().id();
                    stream.write_all(b"x").await.unwrap();
                    served.send(thread).unwrap();
                    std::future::pending::<()>().await
                });
                threads.insert(served_rx.recv().await.unwrap());
            }
            assert_eq!(threads.len(), 2, "served on both runtimes' threads");
            let open: Vec<usize> = runtimes.runtimes.iter().map(|r| r.open.load(Ordering::Relaxed)).collect();
            assert_eq!(open, vec![2, 2], "four connections accepted on runtime 0 spread two and two");
            for client in &mut clients {
                use tokio::io::AsyncReadExt;
                let mut byte = [0u8; 1];
                client.read_exact(&mut byte).await.unwrap();
                assert_eq!(&byte, b"x", "each moved connection is served where it went");
            }
        });
        drop(rt); // its tasks end: its two connections close
        assert_eq!(runtimes.runtimes[0].open.load(Ordering::Relaxed), 0, "closed connections are uncounted");
        stop_other.send(()).unwrap();
        other.join().unwrap();
        assert_eq!(runtimes.runtimes[1].open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_runtime_not_yet_started_gets_nothing() {
        let runtimes = Runtimes::new(3);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { runtimes.started(1) });
        runtimes.runtimes[1].open.store(5, Ordering::Relaxed);
        assert_eq!(runtimes.fewest_open(1), 1, "runtimes 0 and 2 have no handle yet");
        runtimes.runtimes[1].open.store(0, Ordering::Relaxed);
    }
}
