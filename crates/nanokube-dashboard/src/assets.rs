//! The page: plain HTML, CSS and JavaScript written for nanokube (no build step), and
//! xterm.js for the terminal (vendored, rebuilt by `scripts/dashboard-vendor.sh`), built
//! into the binary so the dashboard loads nothing from outside.

/// One file of the page.
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// The file served at `/dashboard/<path>` (`""` is the page itself).
pub fn get(path: &str) -> Option<Asset> {
    let (content_type, bytes): (&'static str, &'static [u8]) = match path {
        "" | "index.html" => ("text/html; charset=utf-8", include_bytes!("../assets/index.html")),
        "app.js" => ("text/javascript; charset=utf-8", include_bytes!("../assets/app.js")),
        "app.css" => ("text/css; charset=utf-8", include_bytes!("../assets/app.css")),
        // xterm.js (MIT), vendored by scripts/dashboard-vendor.sh: the exec terminal.
        "vendor/xterm.js" => ("text/javascript; charset=utf-8", include_bytes!("../assets/vendor/xterm.js")),
        "vendor/xterm.css" => ("text/css; charset=utf-8", include_bytes!("../assets/vendor/xterm.css")),
        _ => return None,
    };
    Some(Asset { content_type, bytes })
}

/// The security headers every dashboard answer carries: nothing from elsewhere may load,
/// the page may not be framed, and no URL leaks through `Referer`.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        // Inline styles are allowed because xterm.js sets its theme in a <style> element;
        // scripts stay 'self' only, and the page never writes markup from data.
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
];
