//! The Prometheus text exposition format (version 0.0.4).
use std::fmt::{Display, Write};

pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Default)]
pub struct Writer(String);

impl Writer {
    /// Starts a metric family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// Label values are user input (rule names): quote what the format needs.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut w = Writer::default();
        w.family("x_total", Kind::Counter, "Things.\nMore");
        w.sample("x_total", &[("name", "a\"b\\c\nd"), ("port", "80")], 3);
        w.sample("x_total", &[], 0);
        assert_eq!(
            w.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{name=\"a\\\"b\\\\c\\nd\",port=\"80\"} 3\nx_total 0\n"
        );
    }
}
