//! Spec text → [`Spec`], with line:column errors (winnow).

use crate::ast::Spec;

/// Why a spec could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct SpecError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was expected or found.
    pub message: String,
}

/// Parses one spec file.
pub fn parse_spec(text: &str) -> Result<Spec, SpecError> {
    let _ = text;
    unimplemented!("helper S")
}
