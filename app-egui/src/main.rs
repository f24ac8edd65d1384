//! `securecomm [DATA_DIR]`: the desktop app.
//! `securecomm --screenshots [OUT_DIR]`: the screenshot tour (see `tour`; needs a display).

use securecomm_app::{App, BackendConfig, default_data_dir};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new("--screenshots")) {
        let out = args
            .next()
            .map_or_else(|| "docs/screenshots".into(), std::path::PathBuf::from);
        return match securecomm_app::tour::run(&out) {
            Ok(saved) => {
                for p in saved {
                    println!("saved {}", p.display());
                }
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("securecomm --screenshots: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let dir = first.map_or_else(default_data_dir, std::path::PathBuf::from);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("SecureComm")
            .with_inner_size([1100.0, 700.0]),
        ..Default::default()
    };
    let result = eframe::run_native(
        "SecureComm",
        options,
        Box::new(move |_cc| {
            let app: Box<dyn eframe::App> = Box::new(App::new(BackendConfig::desktop(dir))?);
            Ok(app)
        }),
    );
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securecomm: {e}");
            if std::env::var_os("DISPLAY").is_none()
                && std::env::var_os("WAYLAND_DISPLAY").is_none()
            {
                eprintln!(
                    "securecomm: no display (DISPLAY is not set). On a machine without one, use \
                     the headless node: securecomm-node --help"
                );
            }
            std::process::ExitCode::FAILURE
        }
    }
}
