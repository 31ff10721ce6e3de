//! Training curves and Recall@K curves as SVG files, for the reports.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::head::EpochLog;

fn plot_error(path: &Path) -> impl Fn(String) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e}", path.display())
}

/// Train loss (left) and held-out Recall@1 (right) per epoch, the best epoch marked.
pub fn training_curves(log: &[EpochLog], best_epoch: usize, path: &Path) -> Result<()> {
    let error = plot_error(path);
    let root = SVGBackend::new(path, (960, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let (left, right) = root.split_horizontally(480);
    let max_loss = log.iter().map(|l| l.loss).fold(0.0, f64::max).max(1e-6);
    let loss: Vec<(f64, f64)> = log.iter().map(|l| (l.epoch as f64, l.loss)).collect();
    let recall: Vec<(f64, f64)> = log.iter().map(|l| (l.epoch as f64, l.holdout_recall_at_1)).collect();
    let best = |points: &[(f64, f64)]| points.iter().copied().find(|p| p.0 == best_epoch as f64);
    epoch_curve(&left, "train loss (Proxy-Anchor)", max_loss * 1.05, &loss, best(&loss)).map_err(&error)?;
    epoch_curve(&right, "held-out Recall@1", 1.0, &recall, best(&recall)).map_err(&error)?;
    root.present().map_err(|e| error(e.to_string()))?;
    Ok(())
}

fn epoch_curve(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    top: f64,
    points: &[(f64, f64)],
    best: Option<(f64, f64)>,
) -> Result<(), String> {
    let epochs = points.len().max(2) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(1f64..epochs, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), &BLUE))
        .map_err(|e| e.to_string())?;
    if let Some(best) = best {
        chart
            .draw_series(std::iter::once(Circle::new(best, 5, RED.filled())))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Recall@K for K = 1..=kmax, one line per named curve.
pub fn recall_curves(curves: &[(String, Vec<f64>)], path: &Path) -> Result<()> {
    let error = plot_error(path);
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let kmax = curves.iter().map(|(_, r)| r.len()).max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption("Recall@K", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(1f64..kmax as f64, 0f64..1f64)
        .map_err(|e| error(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("K")
        .draw()
        .map_err(|e| error(e.to_string()))?;
    for (i, (name, recall)) in curves.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                recall.iter().enumerate().map(|(k, r)| ((k + 1) as f64, *r)),
                colour,
            ))
            .map_err(|e| error(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| error(e.to_string()))?;
    root.present().map_err(|e| error(e.to_string()))?;
    Ok(())
}
