//! Builders for [`ConstraintIr`], one per constraint kind.
//!
//! ```
//! use ananke_client::constraint;
//!
//! let header_then_body = constraint::sequence([
//!     constraint::regex(r"// [a-z ]+\n"),
//!     constraint::json_schema(r#"{"type": "object"}"#),
//! ])
//! .named("header+body")
//! .with_priority(10);
//! assert_eq!(header_then_body.name, "header+body");
//! ```

use crate::pb::constraint_ir::Kind;
use crate::pb::{
    ChoiceConstraint, Combinator, CompositeConstraint, ConstrainedRegion, ConstraintIr,
    GrammarConstraint, GrammarSyntax, JsonSchemaConstraint, JsonSchemaOptions, RegexConstraint,
    StructuralConstraint, TokenMaskConstraint,
};

fn of_kind(kind: Kind) -> ConstraintIr {
    ConstraintIr {
        name: String::new(),
        priority: 0,
        kind: Some(kind),
    }
}

/// The output is one JSON value valid against `schema` (JSON Schema as text).
pub fn json_schema(schema: impl Into<String>) -> ConstraintIr {
    json_schema_with_options(schema, JsonSchemaOptions::default())
}

/// Like [`json_schema`], with rendering and strictness options. Options with
/// nothing set are left out, as the Python builder does, so the same
/// constraint serializes (and is digested) the same from either client.
pub fn json_schema_with_options(
    schema: impl Into<String>,
    options: JsonSchemaOptions,
) -> ConstraintIr {
    of_kind(Kind::JsonSchema(JsonSchemaConstraint {
        schema: schema.into(),
        options: Some(options).filter(|o| *o != JsonSchemaOptions::default()),
    }))
}

/// The whole output matches `pattern` (Rust `regex` syntax, anchored at both
/// ends).
pub fn regex(pattern: impl Into<String>) -> ConstraintIr {
    of_kind(Kind::Regex(RegexConstraint {
        pattern: pattern.into(),
    }))
}

/// Guesses a grammar's syntax: GBNF when it has `::=` rules, else Lark (as
/// Python's `detect_grammar_syntax`).
pub fn detect_grammar_syntax(text: &str) -> GrammarSyntax {
    if text.contains("::=") {
        GrammarSyntax::Gbnf
    } else {
        GrammarSyntax::Lark
    }
}

/// The output is a sentence of the grammar `text` written in `syntax`;
/// `None` detects it with [`detect_grammar_syntax`] (Python's
/// `grammar(text, syntax=None)`).
pub fn grammar(text: impl Into<String>, syntax: Option<GrammarSyntax>) -> ConstraintIr {
    let text = text.into();
    let syntax = syntax.unwrap_or_else(|| detect_grammar_syntax(&text));
    of_kind(Kind::Grammar(GrammarConstraint {
        syntax: syntax.into(),
        text,
    }))
}

/// A Lark grammar (`start: ...`), as llguidance reads it.
pub fn lark(text: impl Into<String>) -> ConstraintIr {
    grammar(text, Some(GrammarSyntax::Lark))
}

/// A GBNF grammar (`root ::= ...`).
pub fn gbnf(text: impl Into<String>) -> ConstraintIr {
    grammar(text, Some(GrammarSyntax::Gbnf))
}

/// The output is exactly one of `options`.
pub fn choice<I, S>(options: I) -> ConstraintIr
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    of_kind(Kind::Choice(ChoiceConstraint {
        options: options.into_iter().map(Into::into).collect(),
    }))
}

/// Only `allowed` token ids may be generated (when non-empty) and `forbidden`
/// ones never are.
pub fn token_mask(
    allowed: impl IntoIterator<Item = u32>,
    forbidden: impl IntoIterator<Item = u32>,
) -> ConstraintIr {
    of_kind(Kind::TokenMask(TokenMaskConstraint {
        allowed_token_ids: allowed.into_iter().collect(),
        forbidden_token_ids: forbidden.into_iter().collect(),
    }))
}

/// Several constraints combined with `combinator`.
pub fn composite(
    combinator: Combinator,
    parts: impl IntoIterator<Item = ConstraintIr>,
) -> ConstraintIr {
    of_kind(Kind::Composite(CompositeConstraint {
        combinator: combinator.into(),
        parts: parts.into_iter().collect(),
    }))
}

/// The concatenation of one output of each part, in order.
pub fn sequence(parts: impl IntoIterator<Item = ConstraintIr>) -> ConstraintIr {
    composite(Combinator::Sequence, parts)
}

/// The output satisfies at least one part.
pub fn any_of(parts: impl IntoIterator<Item = ConstraintIr>) -> ConstraintIr {
    composite(Combinator::AnyOf, parts)
}

/// The output satisfies every part.
pub fn all_of(parts: impl IntoIterator<Item = ConstraintIr>) -> ConstraintIr {
    composite(Combinator::AllOf, parts)
}

/// A constrained region: `begin` in free text opens it, its body follows
/// `constraint`, then `end` is forced. Set `trigger` (a prefix of `begin`) with
/// [`ConstrainedRegion::triggered_by`].
pub fn region(
    begin: impl Into<String>,
    constraint: ConstraintIr,
    end: impl Into<String>,
) -> ConstrainedRegion {
    ConstrainedRegion {
        begin: begin.into(),
        trigger: String::new(),
        constraint: Some(constraint),
        end: end.into(),
        name: String::new(),
    }
}

/// Free text in which each region's trigger opens that region, constrained by
/// its own constraint (a "structural tag"); `min_regions` at least, at most
/// `max_regions` (0: no limit).
pub fn structural(
    regions: impl IntoIterator<Item = ConstrainedRegion>,
    min_regions: u32,
    max_regions: u32,
) -> ConstraintIr {
    of_kind(Kind::Structural(StructuralConstraint {
        regions: regions.into_iter().collect(),
        min_regions,
        max_regions,
    }))
}

impl ConstrainedRegion {
    /// Opens the region on `trigger` (a prefix of `begin`); the rest of `begin` is forced.
    #[must_use]
    pub fn triggered_by(mut self, trigger: impl Into<String>) -> Self {
        self.trigger = trigger.into();
        self
    }

    /// Sets the region's informational name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl ConstraintIr {
    /// Sets the label echoed in provenance and error field paths.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the priority (larger is more important).
    #[must_use]
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_structural() {
        let block = region("```json\n", json_schema("{}"), "\n```").triggered_by("```");
        match structural([block.named("json")], 1, 2).kind {
            Some(Kind::Structural(c)) => {
                assert_eq!((c.min_regions, c.max_regions), (1, 2));
                assert_eq!(c.regions[0].trigger, "```");
                assert_eq!(c.regions[0].name, "json");
                assert!(matches!(
                    c.regions[0]
                        .constraint
                        .as_ref()
                        .and_then(|ir| ir.kind.as_ref()),
                    Some(Kind::JsonSchema(_))
                ));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builds_each_kind() {
        match json_schema("{}").kind {
            Some(Kind::JsonSchema(c)) => {
                assert_eq!(c.schema, "{}");
                assert_eq!(c.options, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        match gbnf("root ::= \"a\"").kind {
            Some(Kind::Grammar(g)) => {
                assert_eq!(g.syntax(), GrammarSyntax::Gbnf);
                assert_eq!(g.text, "root ::= \"a\"");
            }
            other => panic!("unexpected {other:?}"),
        }
        match lark("start: \"a\"").kind {
            Some(Kind::Grammar(g)) => assert_eq!(g.syntax(), GrammarSyntax::Lark),
            other => panic!("unexpected {other:?}"),
        }
        match choice(["yes", "no"]).kind {
            Some(Kind::Choice(c)) => assert_eq!(c.options, ["yes", "no"]),
            other => panic!("unexpected {other:?}"),
        }
        match token_mask([1, 2], [3]).kind {
            Some(Kind::TokenMask(m)) => {
                assert_eq!(m.allowed_token_ids, [1, 2]);
                assert_eq!(m.forbidden_token_ids, [3]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn options_only_when_set_and_syntax_detected() {
        let compact = JsonSchemaOptions {
            whitespace_flexible: Some(false),
            ..JsonSchemaOptions::default()
        };
        match json_schema_with_options("{}", compact.clone()).kind {
            Some(Kind::JsonSchema(c)) => assert_eq!(c.options, Some(compact)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            json_schema_with_options("{}", JsonSchemaOptions::default()),
            json_schema("{}")
        );
        assert_eq!(grammar("root ::= \"a\"", None), gbnf("root ::= \"a\""));
        assert_eq!(grammar("start: \"a\"", None), lark("start: \"a\""));
        assert_eq!(detect_grammar_syntax("a ::= b"), GrammarSyntax::Gbnf);
    }

    #[test]
    fn composites_keep_parts_and_combinator() {
        let c = all_of([regex("a+"), regex("a{2}")])
            .named("two")
            .with_priority(3);
        assert_eq!((c.name.as_str(), c.priority), ("two", 3));
        match c.kind {
            Some(Kind::Composite(comp)) => {
                assert_eq!(comp.combinator(), Combinator::AllOf);
                assert_eq!(comp.parts, [regex("a+"), regex("a{2}")]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            any_of([]).kind,
            Some(Kind::Composite(CompositeConstraint { combinator, .. }))
                if combinator == Combinator::AnyOf as i32
        ));
    }
}
