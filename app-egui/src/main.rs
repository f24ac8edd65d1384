//! `securecomm [DATA_DIR]`: the desktop app.

use securecomm_app::{App, BackendConfig, default_data_dir};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(default_data_dir, std::path::PathBuf::from);
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
            std::process::ExitCode::FAILURE
        }
    }
}
