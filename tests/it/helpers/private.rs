//! Private RabbitMQ and Redis instances for tests that stop and restart them, so the shared
//! ones (and every other test) are never disturbed. Recipe: ../shared/SERVICES.md.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (the OS picks it; we release it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Runs a control command with its output dropped, killing it if it has not ended within
/// `limit`: `rabbitmqctl` and `redis-cli` wait forever on a node that accepts TCP and never
/// answers, and a test must fail, not hang.
fn run_bounded(command: &mut Command, limit: Duration) -> bool {
    let Ok(mut child) = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    let ended = wait_for(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !ended {
        let _ = child.kill();
    }
    matches!(child.wait(), Ok(status) if status.success()) && ended
}

/// A RabbitMQ node of the test's own: own node name, ports and data directory.
pub struct PrivateRabbit {
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRabbit {
    pub fn start() -> PrivateRabbit {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        std::fs::write(dir.path().join("enabled_plugins"), "[].").expect("plugins file");
        let port = free_port();
        // The machine's /etc/rabbitmq/rabbitmq.conf pins the shared listener to 5672, which
        // would win over RABBITMQ_NODE_PORT: the node gets a config file of its own.
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config file");
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the RabbitMQ test dir failed");
        let mut rabbit = PrivateRabbit {
            port,
            dist_port: free_port(),
            node: format!("test{port}@localhost"),
            dir,
            child: None,
        };
        rabbit.boot();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the node (again, with the same data) and waits until it takes connections.
    pub fn boot(&mut self) {
        let log = std::fs::File::create(self.path("stdout.log")).expect("log file");
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_PID_FILE", self.path("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", self.path("feature_flags"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server starts");
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(60), || port_open(self.port));
        assert!(up, "private RabbitMQ did not open port {}", self.port);
    }

    /// Stops the node by its name (never by process name: the shared node must live on).
    pub fn stop(&mut self) {
        run_bounded(
            Command::new("rabbitmqctl").args(["-n", &self.node, "stop"]),
            Duration::from_secs(30),
        );
        if let Some(mut child) = self.child.take() {
            let exited = wait_for(Duration::from_secs(30), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        wait_for(Duration::from_secs(10), || !port_open(self.port));
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// A Redis server of the test's own.
pub struct PrivateRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
    persistent: bool,
}

impl PrivateRedis {
    /// Without persistence: a restart forgets everything (as the shared development Redis).
    pub fn start() -> PrivateRedis {
        Self::start_with(false)
    }

    /// With an append-only file synced on every write, as a production Redis keeps it: a
    /// restart loses nothing. (Used by the chaos suite, which shares these helpers.)
    #[allow(dead_code)]
    pub fn start_persistent() -> PrivateRedis {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            running: false,
            persistent,
        };
        redis.boot();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn boot(&mut self) {
        let pidfile = self.dir.path().join("redis.pid");
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "yes"])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status()
            .expect("redis-server starts");
        assert!(status.success(), "redis-server failed to start");
        self.running = true;
        let up = wait_for(Duration::from_secs(10), || port_open(self.port));
        assert!(up, "private Redis did not open port {}", self.port);
    }

    pub fn stop(&mut self) {
        run_bounded(
            Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown", "nosave"]),
            Duration::from_secs(10),
        );
        self.running = false;
        wait_for(Duration::from_secs(10), || !port_open(self.port));
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.running {
            self.stop();
        }
    }
}

/// A three-node Redis Cluster of the test's own (three primaries, no replicas).
pub struct PrivateRedisCluster {
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl PrivateRedisCluster {
    pub fn start() -> PrivateRedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for port in &ports {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let status = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
                .arg("--dir")
                .arg(&node_dir)
                .arg("--pidfile")
                .arg(node_dir.join("redis.pid"))
                .stdout(Stdio::null())
                .status()
                .expect("redis-server starts");
            assert!(status.success(), "a cluster node failed to start");
            assert!(wait_for(Duration::from_secs(10), || port_open(*port)));
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = run_bounded(
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"]),
            Duration::from_secs(60),
        );
        assert!(created, "redis-cli --cluster create failed");
        let ok = wait_for(Duration::from_secs(20), || {
            ports.iter().all(|port| {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the cluster did not become ok");
        PrivateRedisCluster { ports, dir }
    }

    /// `redis.url` naming every node.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for port in &self.ports {
            run_bounded(
                Command::new("redis-cli").args(["-p", &port.to_string(), "shutdown", "nosave"]),
                Duration::from_secs(10),
            );
        }
        let _ = &self.dir;
    }
}
