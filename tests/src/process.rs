//! Child processes owned by a test: spawned with piped output, killed (and reaped) on drop, including
//! when the test panics, in which case the tail of their output is printed for the failure report.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::mpsc;

/// Lines kept per process for the failure report.
const LOG_LINES: usize = 4000;
/// Lines printed when a test fails.
const DUMP_LINES: usize = 300;

/// One line of a child's output.
#[derive(Debug, Clone)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A running child process. Its stdout and stderr are read by two threads: every line is kept (bounded)
/// for the failure report and forwarded to `lines` so the owner can await specific lines (readiness).
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// Every output line, both streams, in arrival order per stream. Closed when both streams hit EOF.
    pub lines: mpsc::UnboundedReceiver<Line>,
}

impl Proc {
    /// Spawn `cmd` with stdin closed and stdout/stderr piped. The child gets `PR_SET_PDEATHSIG = SIGKILL`
    /// so it cannot outlive a test process that is killed outright (Drop already covers every other
    /// way a test ends). Call this from the test's own thread or runtime, not from `spawn_blocking`: the
    /// death signal fires when the spawning *thread* exits.
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        spawn_reader(name, Stream::Stdout, out, log.clone(), tx.clone());
        spawn_reader(name, Stream::Stderr, err, log.clone(), tx);
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log,
            lines: rx,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `None` while running, the exit status once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait"),
            None => Some(ExitStatus::default()),
        }
    }

    /// Kill (SIGKILL) and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM, wait up to `timeout` for the exit, then SIGKILL. Returns the exit status if the
    /// process exited by itself in time.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A copy of the kept output lines.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().cloned().collect()
    }

    /// The last `n` output lines joined, for panic messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "----- last output of {} (test failed) -----\n{}\n----- end of {} -----",
                self.name,
                self.log_tail(DUMP_LINES),
                self.name
            );
        }
    }
}

fn spawn_reader(
    name: &str,
    stream: Stream,
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<VecDeque<String>>>,
    tx: mpsc::UnboundedSender<Line>,
) {
    let tag = match stream {
        Stream::Stdout => "out",
        Stream::Stderr => "err",
    };
    let prefix = format!("[{name} {tag}] ");
    thread::Builder::new()
        .name(format!("{name}-{tag}"))
        .spawn(move || {
            let mut rd = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match rd.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                        {
                            let mut log = log.lock().unwrap();
                            if log.len() >= LOG_LINES {
                                log.pop_front();
                            }
                            log.push_back(format!("{prefix}{text}"));
                        }
                        // The receiver may be gone (owner stopped listening); keep draining the pipe.
                        let _ = tx.send(Line { stream, text });
                    }
                }
            }
        })
        .expect("spawn output reader thread");
}
