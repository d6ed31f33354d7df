//! Files the server embeds and serves over plain GET: the JavaScript client (`/realtime.js`,
//! always), the inspector (`/`) and the examples (`/examples/defects/`, `/examples/orders/`), these
//! only while realtime.serve_pages is on. They are compiled into the extension, so what a
//! browser loads always matches the server it talks to.

use super::head::Head;
use super::response::Response;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

pub struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// The client library is loaded by pages of other origins; pages are not.
    library: bool,
    /// Its ETag, computed at first use.
    etag: OnceLock<String>,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// `asset!(url path, file from the repository root, content type, library?)`
macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr, $library:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_str!(concat!("../../../../", $file)),
            library: $library,
            etag: OnceLock::new(),
        }
    };
}

#[rustfmt::skip] // a table: one file a line
static ASSETS: [Asset; 9] = [
    asset!("/realtime.js", "clients/js/realtime.js", JS, true),
    asset!("/", "clients/inspector/index.html", HTML, false),
    asset!("/inspector.js", "clients/inspector/inspector.js", JS, false),
    asset!("/inspector.css", "clients/inspector/inspector.css", CSS, false),
    asset!("/examples/defects/", "examples/defects/index.html", HTML, false),
    asset!("/examples/defects/dashboard.js", "examples/defects/dashboard.js", JS, false),
    asset!("/examples/defects/dashboard.css", "examples/defects/dashboard.css", CSS, false),
    asset!("/examples/orders/", "examples/orders/index.html", HTML, false),
    asset!("/examples/orders/orders.js", "examples/orders/orders.js", JS, false),
];

/// The asset at `path`, if one is served there now. `/index.html` and a directory without its
/// trailing slash name the same page.
pub fn find(path: &str, serve_pages: bool) -> Option<&'static Asset> {
    let path = match path {
        "/index.html" => "/",
        "/examples/defects" | "/examples/defects/index.html" => "/examples/defects/",
        "/examples/orders" | "/examples/orders/index.html" => "/examples/orders/",
        p => p,
    };
    ASSETS
        .iter()
        .find(|a| a.path == path && (a.library || serve_pages))
}

/// Pages may load scripts, styles and data from this server only, and connect back to it;
/// they are never framed (clickjacking a page that holds a token).
const PAGE_POLICY: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

impl Asset {
    /// A strong validator: the same bytes always get the same tag, within one build.
    fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let mut h = std::hash::DefaultHasher::new();
            self.body.hash(&mut h);
            format!("\"{:016x}\"", h.finish())
        })
    }

    /// The answer to `GET`/`HEAD` of this asset: 304 when the client's copy is current.
    pub fn response(&'static self, head: &Head) -> Response {
        let etag = self.etag();
        let fresh = head
            .header("if-none-match")
            .split(',')
            .any(|t| t.trim().trim_start_matches("W/") == etag);
        let mut response = if fresh {
            Response::text("304 Not Modified", self.content_type, "")
        } else {
            Response::text("200 OK", self.content_type, self.body)
        }
        .header(&format!("ETag: {etag}"))
        .header("X-Content-Type-Options: nosniff");
        response = if self.library {
            // Short-lived and revalidated: an upgraded server's client reaches pages within
            // minutes. Any origin may load it; what it connects to decides what it sees.
            response
                .header("Cache-Control: public, max-age=300")
                .header("Access-Control-Allow-Origin: *")
        } else {
            response
                .header("Cache-Control: no-cache")
                .header("Referrer-Policy: no-referrer")
                .header(PAGE_POLICY)
        };
        response.head_only = head.method == "HEAD";
        response
    }
}

#[cfg(test)]
mod unit {
    use super::find;

    #[test]
    fn pages_are_served_only_while_enabled_and_the_library_always() {
        assert!(find("/realtime.js", false).is_some());
        for page in ["/", "/index.html", "/inspector.js", "/examples/defects"] {
            assert!(find(page, true).is_some(), "{page}");
            assert!(find(page, false).is_none(), "{page}");
        }
        assert!(find("/examples/", true).is_none());
        assert!(find("/../Cargo.toml", true).is_none());
    }

    #[test]
    fn tags_differ_between_assets() {
        let a = find("/realtime.js", true).unwrap().etag();
        let b = find("/", true).unwrap().etag();
        assert_ne!(a, b);
        assert_eq!(a, find("/realtime.js", true).unwrap().etag());
    }
}
