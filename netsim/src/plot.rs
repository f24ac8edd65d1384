//! A picture of a run (`securecomm-netsim run --plot FILE.svg`): message latency over time
//! (one dot per receipt, by receiver), each pair's path over time (relayed or direct), and the
//! timeline's faults as vertical lines across both.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{NetsimError, Result};
use crate::report::Report;

fn err(e: impl std::fmt::Display) -> NetsimError {
    NetsimError::Unexpected {
        what: "drawing the plot".into(),
        expected: "an SVG".into(),
        got: e.to_string(),
    }
}

const RELAYED: RGBColor = RGBColor(230, 145, 30);
const DIRECT: RGBColor = RGBColor(40, 160, 80);
const FAULT: RGBColor = RGBColor(200, 40, 40);

/// Draws `report` as an SVG file at `path`.
pub fn svg(report: &Report, path: &Path) -> Result<()> {
    let pairs = &report.pairs;
    let end_ms = report
        .messages
        .iter()
        .flat_map(|m| {
            m.receipts
                .iter()
                .filter_map(move |r| r.latency_ms.map(|l| m.sent_ms + l))
        })
        .chain(report.events.iter().map(|e| e.at_ms))
        .chain(
            pairs
                .iter()
                .flat_map(|p| p.path_changes.iter().map(|c| c.0)),
        )
        .max()
        .unwrap_or(1000)
        + 1000;
    let end_s = end_ms as f64 / 1000.0;
    let max_latency = report
        .messages
        .iter()
        .flat_map(|m| m.receipts.iter().filter_map(|r| r.latency_ms))
        .max()
        .unwrap_or(100)
        .max(100) as f64
        * 1.1;
    let height = 360 + 18 * pairs.len().clamp(2, 60) as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(340);

    // Latency of every receipt, at the time the message was sent.
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: message latency by receiver", report.scenario),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, 0f64..max_latency)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since every node was up")
        .y_desc("latency (ms)")
        .draw()
        .map_err(err)?;
    let mut hosts: Vec<&str> = report
        .messages
        .iter()
        .flat_map(|m| m.receipts.iter().map(|r| r.host.as_str()))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    for (i, host) in hosts.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = report
            .messages
            .iter()
            .filter_map(|m| {
                let r = m.receipts.iter().find(|r| r.host == *host)?;
                Some((m.sent_ms as f64 / 1000.0, r.latency_ms? as f64))
            })
            .collect();
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(err)?
            .label(*host)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    for e in &report.events {
        let x = e.at_ms as f64 / 1000.0;
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, max_latency)],
                FAULT.stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                e.what.clone(),
                (x, max_latency * 0.95),
                ("sans-serif", 12).into_font().color(&FAULT),
            )))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    // Each pair's path over time.
    let rows = pairs.len().max(1);
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "path of each pair (orange relayed, green direct)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(140)
        .build_cartesian_2d(0f64..end_s, 0f64..rows as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .y_labels(0)
        .x_desc("seconds since every node was up")
        .draw()
        .map_err(err)?;
    // Pair names in the margin on the left of each row.
    for (i, p) in pairs.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, i as f64 + 0.75));
        let (bx, by) = bottom.get_base_pixel();
        bottom
            .draw(&Text::new(
                format!("{}-{}", p.a, p.b),
                (x - bx - 135, y - by),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(err)?;
    }
    for (i, p) in pairs.iter().enumerate() {
        let y0 = i as f64 + 0.15;
        let y1 = i as f64 + 0.85;
        for (j, (t, state)) in p.path_changes.iter().enumerate() {
            let until = p.path_changes.get(j + 1).map_or(end_ms, |next| next.0);
            let color = match state.as_str() {
                "direct" => DIRECT,
                "relayed" => RELAYED,
                _ => continue,
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(*t as f64 / 1000.0, y0), (until as f64 / 1000.0, y1)],
                    color.filled(),
                )))
                .map_err(err)?;
        }
    }
    for e in &report.events {
        let x = e.at_ms as f64 / 1000.0;
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, rows as f64)],
                FAULT.stroke_width(1),
            ))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{MessageAudit, PairReport, Receipt, TimelineEvent};

    #[test]
    fn a_run_draws_dots_bars_and_fault_lines() {
        let mut r = Report::new("chaos", "scn000000", Path::new("/nonexistent"));
        r.pairs.push(PairReport {
            a: "ann".into(),
            b: "ben".into(),
            a_to_b: Some("direct".into()),
            b_to_a: Some("direct".into()),
            first_connected_ms: Some(300),
            first_direct_ms: Some(900),
            both_joined_ms: Some(100),
            path_changes: vec![(300, "relayed".into()), (900, "direct".into())],
        });
        r.messages.push(MessageAudit {
            sender: "ann".into(),
            channel: "general".into(),
            text: "hi #0".into(),
            receipts: vec![Receipt {
                host: "ben".into(),
                count: 1,
                latency_ms: Some(42),
            }],
            latency_exempt: Vec::new(),
            max_latency_ms: None,
            sent_ms: 1500,
        });
        r.events.push(TimelineEvent {
            at_ms: 2000,
            what: "kill relay1".into(),
        });
        let path = std::env::temp_dir().join(format!("netsim-plot-{}.svg", std::process::id()));
        svg(&r, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(text.starts_with("<svg"), "{}", &text[..80.min(text.len())]);
        assert!(text.contains("kill relay1"));
        assert!(text.contains("ann-ben"));
        assert!(text.contains("<circle"), "a receipt dot");
        // Relayed and direct bars in their colours.
        assert!(text.contains("#E6911E"), "relayed bar");
        assert!(text.contains("#28A050"), "direct bar");
    }
}
