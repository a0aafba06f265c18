//! The SVG timeline: successes and errors per second on top, live sessions
//! per backend below, marked events as vertical lines. Written by hand (a
//! few polylines), which is simpler than a plotting dependency.

use std::fmt::Write;

use crate::timeline::Timeline;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
];

/// Escapes text for SVG.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Panel {
    top: f64,
    t_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t / self.t_max)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + PANEL - PANEL * (v / self.y_max)
    }

    fn frame(&self, out: &mut String, title: &str) {
        let _ = write!(
            out,
            r##"<rect x="{LEFT}" y="{}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
            self.top,
            WIDTH - LEFT - RIGHT
        );
        let _ = write!(
            out,
            r#"<text x="{LEFT}" y="{}" font-size="13">{}</text>"#,
            self.top - 6.0,
            escape(title)
        );
        for i in 0..=4 {
            let v = self.y_max * f64::from(i) / 4.0;
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"#,
                LEFT - 4.0,
                self.y(v) + 3.0,
                human(v)
            );
        }
        for i in 0..=5 {
            let t = self.t_max * f64::from(i) / 5.0;
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{:.0}s</text>"#,
                self.x(t),
                self.top + PANEL + 12.0,
                t
            );
        }
    }

    fn line(&self, out: &mut String, points: &[(f64, f64)], colour: &str, dash: bool) {
        let pts: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v)))
            .collect();
        let dash = if dash {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{}"/>"#,
            pts.join(" ")
        );
    }
}

fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn legend(out: &mut String, x: f64, y: f64, items: &[(&str, String)]) {
    for (i, (colour, name)) in items.iter().enumerate() {
        let xi = x + 130.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{xi}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            y - 9.0,
            xi + 14.0,
            y,
            escape(name)
        );
    }
}

/// Renders `timeline` as a standalone SVG document.
pub fn svg(timeline: &Timeline, title: &str) -> String {
    let t_max = timeline.samples.last().map(|s| s.t).unwrap_or(1.0).max(1.0);
    let height = TOP + 2.0 * PANEL + GAP + 40.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let uses_bytes = timeline.samples.iter().any(|s| s.bytes_per_s > 0.0);
    let rate = |s: &crate::timeline::Sample| {
        if uses_bytes {
            s.bytes_per_s
        } else {
            s.ok_per_s
        }
    };
    let y_max = timeline
        .samples
        .iter()
        .map(|s| rate(s).max(s.errors_per_s))
        .fold(1.0, f64::max)
        * 1.1;
    let top = Panel {
        top: TOP,
        t_max,
        y_max,
    };
    let what = if uses_bytes { "bytes/s" } else { "ok/s" };
    top.frame(&mut out, &format!("{what} (solid) and errors/s (dashed)"));
    let ok: Vec<(f64, f64)> = timeline.samples.iter().map(|s| (s.t, rate(s))).collect();
    let errors: Vec<(f64, f64)> = timeline
        .samples
        .iter()
        .map(|s| (s.t, s.errors_per_s))
        .collect();
    top.line(&mut out, &ok, COLOURS[0], false);
    top.line(&mut out, &errors, "#d62728", true);

    let sessions_max = timeline
        .samples
        .iter()
        .flat_map(|s| s.per_backend.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let bottom = Panel {
        top: TOP + PANEL + GAP,
        t_max,
        y_max: sessions_max,
    };
    bottom.frame(&mut out, "live sessions per backend");
    let mut items = Vec::new();
    for (i, name) in timeline.backends.iter().enumerate() {
        let colour = COLOURS[(i + 1) % COLOURS.len()];
        let pts: Vec<(f64, f64)> = timeline
            .samples
            .iter()
            .map(|s| (s.t, s.per_backend.get(i).copied().unwrap_or(0) as f64))
            .collect();
        bottom.line(&mut out, &pts, colour, false);
        items.push((colour, name.clone()));
    }
    legend(&mut out, LEFT, height - 10.0, &items);
    for mark in &timeline.marks {
        let x = top.x(mark.t);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#d62728" stroke-width="1"/><text x="{:.1}" y="{}" font-size="11" fill="#d62728">{}</text>"##,
            TOP + 2.0 * PANEL + GAP,
            x + 3.0,
            TOP + 12.0,
            escape(&mark.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Sample;

    #[test]
    fn renders_lines_and_marks() {
        let mut t = Timeline::new(vec!["b1".into(), "b<2>".into()]);
        for i in 0..4 {
            t.push(Sample {
                t: f64::from(i),
                ok_per_s: 10.0,
                per_backend: vec![1, 2],
                ..Sample::default()
            });
        }
        t.mark(2.0, "kill b1".into());
        let svg = svg(&t, "test");
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("kill b1"));
        assert!(svg.contains("b&lt;2&gt;"));
    }
}
