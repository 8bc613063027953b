//! Real `nats-server` processes for tests: one server, or a cluster of three, on free
//! loopback ports with JetStream and their own store directories. Each process is killed
//! when its handle drops.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `nats-server` process.
pub struct NatsServer {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    config: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// Whether `nats-server` can be started here.
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl NatsServer {
    /// A single server with JetStream.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server =
            NatsServer::configure(dir.path(), "n1", free_port(), free_port(), &[], false);
        server._dir = Some(dir);
        server.spawn();
        server
    }

    /// A single server without JetStream (for the start-up error).
    pub fn start_without_jetstream() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let path = dir.path().join("plain.conf");
        std::fs::write(&path, format!("listen: 127.0.0.1:{port}\n")).expect("write nats config");
        let mut server = NatsServer {
            child: None,
            name: "plain".into(),
            port,
            cluster_port: 0,
            config: path,
            _dir: Some(dir),
        };
        server.spawn();
        server
    }

    fn configure(
        dir: &Path,
        name: &str,
        port: u16,
        cluster_port: u16,
        routes: &[u16],
        clustered: bool,
    ) -> NatsServer {
        let store = dir.join(format!("{name}-store"));
        let mut config = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nmax_payload: 8MB\n\
             ping_interval: \"2s\"\nping_max: 2\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n",
            store.display()
        );
        if clustered {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: tessera-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).expect("write nats config");
        NatsServer {
            child: None,
            name: name.to_owned(),
            port,
            cluster_port,
            config: path,
            _dir: None,
        }
    }

    fn spawn(&mut self) {
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server (apt-get install -y nats-server)");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Server is ready")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("nats-server did not become ready within 20 s");
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (its store stays for a restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three clustered servers.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster_ports: Vec<u16> = ports.iter().map(|p| p.1).collect();
        let mut servers: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port))| {
                NatsServer::configure(
                    dir.path(),
                    &format!("n{}", i + 1),
                    port,
                    cluster_port,
                    &cluster_ports,
                    true,
                )
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        // JetStream in a fresh cluster needs a meta leader before it takes requests;
        // `Cluster::connect` retries while it elects one.
        NatsCluster { servers, _dir: dir }
    }

    /// Every server's URL, comma-separated, as `--cluster` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
