//! The parsers take text from configuration files and from clients (`subscribe` with `filter`):
//! whatever the input, they answer with a value or an error, never a panic, and an error's
//! position lies inside (or just past) the input.

use herald_spec::{Filter, parse_spec};
use proptest::prelude::*;

/// Text that is mostly made of the languages' own tokens, so the fuzz gets deep into them.
fn tokens() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("app".to_string()),
        Just("entity".to_string()),
        Just("attr".to_string()),
        Just("view".to_string()),
        Just("subscription".to_string()),
        Just("where".to_string()),
        Just("by id".to_string()),
        Just("ref".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(":".to_string()),
        Just("?".to_string()),
        Just("|".to_string()),
        Just(",".to_string()),
        Just(".".to_string()),
        Just("\n".to_string()),
        Just("//".to_string()),
        Just("==".to_string()),
        Just("!=".to_string()),
        Just("<=".to_string()),
        Just(">".to_string()),
        Just("and".to_string()),
        Just("or".to_string()),
        Just("not".to_string()),
        Just("in".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("string".to_string()),
        Just("number".to_string()),
        Just("bool".to_string()),
        Just("\"".to_string()),
        Just("\\u00e9".to_string()),
        Just("\\ud800".to_string()),
        "[a-z]{1,6}",
        "-?[0-9]{1,4}(\\.[0-9]{1,3})?(e-?[0-9]{1,3})?",
        "\"[^\"\\\\]{0,5}\"",
        "\\PC{1,3}",
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.join(" "))
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_filter_parser_never_panics(text in prop_oneof![tokens(), "\\PC{0,80}"]) {
        if let Err(e) = Filter::parse(&text) {
            prop_assert!(e.column >= 1 && e.column <= chars(&text) + 1, "{e} for {text:?}");
        }
    }

    #[test]
    fn the_spec_parser_never_panics(body in prop_oneof![tokens(), "\\PC{0,80}"]) {
        for text in [body.clone(), format!("app A {{\n  entity T {{\n    attr a: string\n  }}\n  {body}\n}}\n")] {
            if let Err(e) = parse_spec(&text) {
                let lines = text.split('\n').count();
                prop_assert!(e.line >= 1 && e.line <= lines, "{e} for {text:?}");
            }
        }
    }
}
