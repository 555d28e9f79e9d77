//! The page, compiled into the binary: plain HTML, CSS, JavaScript and an SVG icon, with no
//! build step and nothing fetched from elsewhere (the CSP would refuse it anyway).

/// One embedded file and the path it is served at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asset {
    /// The URL path.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// Every file of the page.
pub(crate) const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        path: "/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/console.css"),
    },
    Asset {
        path: "/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/console.js"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_runs_no_inline_script() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in &ASSETS[1..] {
            assert!(html.contains(asset.path), "{} is linked", asset.path);
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
        // Every <script> has a src and no body; no inline handlers or styles.
        for part in html.split("<script").skip(1) {
            assert!(
                part.trim_start().starts_with("src=") && part.contains("></script>"),
                "{part}"
            );
        }
        for attr in [" onload=", " onclick=", " style="] {
            assert!(!html.contains(attr), "{attr}");
        }
        let js = std::str::from_utf8(ASSETS[2].body).unwrap();
        assert!(!js.contains("innerHTML") && !js.contains("eval("));
    }
}
