//! The broker binary as a child process on a data directory, for crash tests: started with a
//! ports file (every listener on an OS-chosen port) and killed with SIGKILL.

use super::{test_config_text_in, WAIT};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct BrokerProcess {
    child: Child,
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    pub stomp: SocketAddr,
    pub http: SocketAddr,
}

impl Drop for BrokerProcess {
    /// A failing test must not leave a broker running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn first_addr(ports: &serde_json::Value, protocol: &str) -> Option<SocketAddr> {
    ports[protocol][0].as_str()?.parse().ok()
}

impl BrokerProcess {
    /// Starts the broker binary on `dir` (test config) and waits for its ports file.
    pub fn spawn(dir: &Path) -> Self {
        Self::spawn_with(dir, "")
    }

    /// As [`BrokerProcess::spawn`], with `extra` TOML (whole sections) after the test config.
    pub fn spawn_with(dir: &Path, extra: &str) -> Self {
        std::fs::create_dir_all(dir).expect("data dir");
        let config = dir.join("switchboard.toml");
        std::fs::write(&config, test_config_text_in(dir) + extra).expect("config");
        let ports = dir.join("ports.json");
        let _ = std::fs::remove_file(&ports);
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut broker = BrokerProcess {
            child: Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--ports-file")
                .arg(&ports)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn broker"),
            amqp: unbound,
            mqtt: unbound,
            stomp: unbound,
            http: unbound,
        };
        // From here on, a panic drops (kills) the broker.
        let deadline = std::time::Instant::now() + WAIT * 3;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    broker.amqp = first_addr(&v, "amqp").expect("amqp address");
                    broker.mqtt = first_addr(&v, "mqtt").expect("mqtt address");
                    broker.stomp = first_addr(&v, "stomp").expect("stomp address");
                    broker.http = first_addr(&v, "http").expect("http address");
                    return broker;
                }
            }
            assert!(std::time::Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `within` for the broker to exit by itself; its exit status if it did.
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no shutdown, no last write.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// SIGKILLs the broker as soon as `progress()` (what the clients saw acknowledged so far)
    /// reaches `target`, then ends the client `tasks`: what they record happens as it happens,
    /// and whatever they wait on now can only fail, however long their clients take to notice.
    pub async fn kill_at<T>(
        self,
        target: usize,
        mut progress: impl FnMut() -> usize,
        tasks: Vec<tokio::task::JoinHandle<T>>,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT * 6;
        loop {
            let done = progress();
            if done >= target {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {done} acknowledgements of {target} before the deadline"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.kill();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}
