//! Reading shop catalogs: CSV and JSON Lines, with bad rows reported by line and skipped.

use std::path::{Path, PathBuf};

use otlens::catalog::{parse_catalog, read_catalog, CatalogError, CatalogFormat, Product};

const SHOP: &str = "/shop";

fn lines_and_messages(problems: &[otlens::catalog::RowProblem]) -> Vec<(u64, String)> {
    problems.iter().map(|p| (p.line, p.message.clone())).collect()
}

#[test]
fn csv_rows_become_products_with_resolved_photos() {
    let csv = "\u{feff}id,Title,brand,price,currency,category,color,url,image,stock\n\
               a1,\"Linen shirt, white\",Acme,39000,krw,Shirt,white,https://shop.example/a1,photos/a1.jpg,3\n\
               a2,Wool coat,,,,Coat,,,/srv/photos/a2.png,0\n";
    let catalog = parse_catalog(csv.as_bytes(), CatalogFormat::Csv, Path::new(SHOP)).unwrap();
    assert!(catalog.problems.is_empty(), "{:?}", catalog.problems);
    assert_eq!(catalog.entries.len(), 2);
    let first = &catalog.entries[0];
    assert_eq!(first.line, 2);
    assert_eq!(first.image, PathBuf::from("/shop/photos/a1.jpg"));
    assert_eq!(
        first.product,
        Product {
            id: "a1".into(),
            title: "Linen shirt, white".into(),
            brand: "Acme".into(),
            price: Some(39000.0),
            currency: "KRW".into(),
            category: "Shirt".into(),
            colour: "white".into(),
            url: "https://shop.example/a1".into(),
            thumbnail: String::new(),
            sold_out: false,
        }
    );
    let second = &catalog.entries[1];
    assert_eq!(
        second.image,
        PathBuf::from("/srv/photos/a2.png"),
        "absolute paths stay as they are"
    );
    assert_eq!(second.product.price, None);
}

#[test]
fn bad_csv_rows_are_reported_by_line_and_skipped() {
    let csv = "id,title,price,currency,image\n\
               ok1,Shirt,10,EUR,1.jpg\n\
               ,No id,10,EUR,2.jpg\n\
               p3,,10,EUR,3.jpg\n\
               p4,Shirt,ten,EUR,4.jpg\n\
               p5,Shirt,10,EUR\n\
               p6,Shirt,10,EUR,https://cdn.example/6.jpg\n\
               ok1,Same id,10,EUR,7.jpg\n\
               p8,Shirt,-5,EUR,8.jpg\n\
               p9,Shirt,10,euros,9.jpg\n\
               p10,Shirt,10,EUR,\n\
               \n\
               ok2,\"Multi\nline title\",10,EUR,12.jpg\n\
               ok3,Shirt,,,13.jpg\n";
    let catalog = parse_catalog(csv.as_bytes(), CatalogFormat::Csv, Path::new(SHOP)).unwrap();
    let ids: Vec<_> = catalog
        .entries
        .iter()
        .map(|e| (e.line, e.product.id.as_str()))
        .collect();
    assert_eq!(ids, [(2, "ok1"), (13, "ok2"), (15, "ok3")]);
    let problems = lines_and_messages(&catalog.problems);
    let lines: Vec<u64> = problems.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 11], "{problems:#?}");
    let message = |line: u64| &problems.iter().find(|(l, _)| *l == line).unwrap().1;
    assert!(message(3).contains("missing id"));
    assert!(message(4).contains("no title"));
    assert!(message(5).contains("\"ten\" is not a number"));
    assert!(message(6).contains("4 fields but the header has 5"));
    assert!(message(7).contains("URLs are not supported"));
    assert!(message(8).contains("duplicate id \"ok1\" (first used on line 2)"));
    assert!(message(9).contains("\"-5\""));
    assert!(message(10).contains("ISO 4217"));
    assert!(message(11).contains("no image"));
    assert_eq!(catalog.problems[0].to_string(), format!("line 3: {}", message(3)));
}

#[test]
fn csv_without_required_columns_is_refused() {
    let error = parse_catalog(b"id,name,photo\n1,x,y.jpg\n", CatalogFormat::Csv, Path::new(SHOP)).unwrap_err();
    assert!(matches!(error, CatalogError::MissingColumn("title")), "{error}");
    assert!(error.to_string().contains("no title column"));
}

#[test]
fn json_lines_accept_numbers_colour_spellings_and_report_bad_lines() {
    let jsonl = r#"{"id": 17, "title": "Denim jacket", "price": 59000, "currency": "KRW", "color": "blue", "image": "17.jpg", "tags": ["x"]}
{"id": "b2", "title": "Scarf", "colour": "red", "image": "b2.webp", "price": null}

not json
["an", "array"]
{"id": "b5", "title": "Hat", "image": "b5.jpg", "price": {"amount": 3}}
{"id": "b6", "title": "Hat", "image": "b6.jpg", "price": "12.50"}
"#;
    let catalog = parse_catalog(jsonl.as_bytes(), CatalogFormat::JsonLines, Path::new(SHOP)).unwrap();
    let ids: Vec<_> = catalog
        .entries
        .iter()
        .map(|e| (e.line, e.product.id.as_str()))
        .collect();
    assert_eq!(ids, [(1, "17"), (2, "b2"), (7, "b6")]);
    assert_eq!(catalog.entries[0].product.colour, "blue");
    assert_eq!(catalog.entries[0].product.price, Some(59000.0));
    assert_eq!(catalog.entries[1].product.colour, "red");
    assert_eq!(catalog.entries[1].product.price, None);
    assert_eq!(catalog.entries[2].product.price, Some(12.5));
    assert_eq!(catalog.entries[1].image, PathBuf::from("/shop/b2.webp"));
    let problems = lines_and_messages(&catalog.problems);
    assert_eq!(problems.iter().map(|(l, _)| *l).collect::<Vec<_>>(), [4, 5, 6]);
    assert!(problems[0].1.contains("not a JSON object"));
    assert!(problems[2].1.contains("\"price\" must be text, a number or true/false"));
}

#[test]
fn in_stock_accepts_common_spellings_and_defaults_to_in_stock() {
    let csv = "id,title,image,In_Stock\n\
               a,A,a.jpg,yes\n\
               b,B,b.jpg,0\n\
               c,C,c.jpg,\n\
               d,D,d.jpg,Sold out\n\
               e,E,e.jpg,maybe\n";
    let catalog = parse_catalog(csv.as_bytes(), CatalogFormat::Csv, Path::new(SHOP)).unwrap();
    let sold_out: Vec<_> = catalog
        .entries
        .iter()
        .map(|e| (e.product.id.as_str(), e.product.sold_out))
        .collect();
    assert_eq!(sold_out, [("a", false), ("b", true), ("c", false), ("d", true)]);
    assert_eq!(
        lines_and_messages(&catalog.problems),
        [(
            6,
            "product \"e\": in_stock \"maybe\" is not one of true, false, yes, no, 1, 0".to_owned()
        )]
    );
    let jsonl = "{\"id\": \"f\", \"title\": \"F\", \"image\": \"f.jpg\", \"in_stock\": false}\n";
    let catalog = parse_catalog(jsonl.as_bytes(), CatalogFormat::JsonLines, Path::new(SHOP)).unwrap();
    assert!(catalog.entries[0].product.sold_out);
    // Only sold-out products carry the flag in the index's metadata.
    let json = serde_json::to_string(&catalog.entries[0].product).unwrap();
    assert!(json.ends_with(",\"sold_out\":true}"), "{json}");
    assert!(!serde_json::to_string(&Product::default()).unwrap().contains("sold_out"));
}

#[test]
fn files_are_read_by_extension_or_content_relative_to_their_folder() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("products.jsonl");
    std::fs::write(&jsonl, "{\"id\":\"1\",\"title\":\"T\",\"image\":\"img/1.jpg\"}\n").unwrap();
    let sniffed = dir.path().join("products.txt");
    std::fs::write(&sniffed, "  {\"id\":\"1\",\"title\":\"T\",\"image\":\"1.jpg\"}\n").unwrap();
    let csv = dir.path().join("products.csv");
    std::fs::write(&csv, "id,title,image\n1,T,1.jpg\n").unwrap();
    for path in [&jsonl, &sniffed, &csv] {
        let catalog = read_catalog(path).unwrap();
        assert_eq!(catalog.entries.len(), 1, "{}", path.display());
        assert!(catalog.entries[0].image.starts_with(dir.path()));
    }
    let missing = read_catalog(&dir.path().join("nope.csv")).unwrap_err();
    assert!(matches!(missing, CatalogError::Read { .. }));
    assert!(missing.to_string().contains("nope.csv"), "{missing}");
}
