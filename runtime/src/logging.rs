//! runc-style logs: `--log FILE` (default stderr), `--log-format text|json`. JSON lines are
//! logrus-shaped, `{"level":"error","msg":"…","time":"RFC3339"}`: containerd reads the last
//! `level:error` line to report a failure.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Where log lines go.
pub struct LogSink {
    out: Mutex<Box<dyn Write + Send>>,
    format: Format,
    /// true when the sink is a file (the CLI then also prints errors to stderr).
    pub is_file: bool,
}

impl LogSink {
    pub fn open(path: Option<&Path>, format: Format) -> std::io::Result<LogSink> {
        let (out, is_file): (Box<dyn Write + Send>, bool) = match path {
            Some(p) if p != Path::new("/dev/stderr") => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                (Box::new(f), true)
            }
            _ => (Box::new(std::io::stderr()), false),
        };
        Ok(LogSink {
            out: Mutex::new(out),
            format,
            is_file,
        })
    }

    /// Write one line at `level`.
    pub fn line(&self, level: &str, msg: &str) {
        let now = crate::time::rfc3339(std::time::SystemTime::now());
        let text = match self.format {
            Format::Json => {
                let v = serde_json::json!({"level": level, "msg": msg, "time": now});
                format!("{v}\n")
            }
            Format::Text => format!("time=\"{now}\" level={level} msg={msg:?}\n"),
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
}

struct SinkLayer {
    sink: std::sync::Arc<LogSink>,
    max: Level,
}

#[derive(Default)]
struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for SinkLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let level = *event.metadata().level();
        if level > self.max {
            return;
        }
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        self.sink.line(&level.as_str().to_ascii_lowercase(), &v.0);
    }
}

/// Install the global subscriber writing to `sink` (warn and above, debug with `--debug`).
pub fn init(sink: std::sync::Arc<LogSink>, debug: bool) {
    let max = if debug { Level::DEBUG } else { Level::WARN };
    let subscriber = tracing_subscriber::registry().with(SinkLayer { sink, max });
    let _ = tracing::subscriber::set_global_default(subscriber);
}
