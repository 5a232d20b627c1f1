//! The PNG: packet rate, connection rate and latency against the number of
//! services, one line per contender, bars from min to max over the rounds.
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::modes::Mode;
use crate::report::{Metric, Results};

/// Read at run time (Debian's fonts-dejavu-core), so no font ships with us.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::LoxTc => RGBColor(31, 119, 180),
        Mode::LoxXdp => RGBColor(23, 190, 207),
        Mode::Iptables => RGBColor(214, 39, 40),
        Mode::Nftables => RGBColor(255, 127, 14),
        Mode::Forward => RGBColor(127, 127, 127),
        Mode::CeilingTc => RGBColor(44, 160, 44),
        Mode::CeilingXdp => RGBColor(23, 100, 30),
    }
}

fn scaled(m: Metric) -> (f64, &'static str) {
    match m {
        Metric::UdpEstablished | Metric::UdpNew => (1e6, "million packets per CPU-second"),
        Metric::TcpConnections => (1e3, "thousand connections per CPU-second"),
        Metric::LatencyP50 | Metric::LatencyP99 => (1.0, "µs"),
    }
}

/// A tick label without float noise: 0.2, 1.25, 3500.
fn tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

pub fn draw(r: &Results, services: &[usize], title: &str, path: &Path) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("reading {FONT}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let root = BitMapBackend::new(path, (1600, 1650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 26))
        .map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((3, 2));
    // The sixth cell holds one legend for all panels.
    let legend = &areas[5];
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let (x, y) = (60, 60 + i as i32 * 40);
        legend
            .draw(&PathElement::new(
                [(x, y + 8), (x + 30, y + 8)],
                color(mode).stroke_width(4),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        legend
            .draw(&Text::new(mode.label(), (x + 45, y), ("sans-serif", 20)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    let panels = [
        Metric::UdpEstablished,
        Metric::UdpNew,
        Metric::TcpConnections,
        Metric::LatencyP50,
        Metric::LatencyP99,
    ];
    let (lo, hi) = (
        *services.iter().min().context("no service counts")? as f64,
        *services.iter().max().context("no service counts")? as f64,
    );
    for (area, m) in areas.iter().zip(panels) {
        let (div, unit) = scaled(m);
        let top = Mode::ALL
            .iter()
            .flat_map(|&mode| services.iter().filter_map(move |&n| r.summary(m, n, mode)))
            .map(|s| s.max / div)
            .fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} ({unit})", m.label()), ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (lo / 1.6..hi * 1.6).log_scale(),
                0.0..(top * 1.15).max(1e-9),
            )
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("services")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for mode in Mode::ALL.into_iter().filter(|&mode| m.applies(mode)) {
            let points: Vec<(f64, f64, f64, f64)> = services
                .iter()
                .filter_map(|&n| {
                    let s = r.summary(m, n, mode)?;
                    Some((n as f64, s.median / div, s.min / div, s.max / div))
                })
                .collect();
            let c = color(mode);
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.1)),
                    c.stroke_width(3),
                ))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, c.filled(), 8)),
                )
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
