//! The `calculator` MCP server: one tool, `evaluate`, that computes arithmetic and
//! mathematical expressions (`+ - * / ^`, parentheses, `sqrt`, `sin`, `ln`, `exp`,
//! `abs`, … and the constants `PI` and `E`) with the `exmex` parser. Nothing is
//! executed: an expression is parsed into a tree of numbers and operators, and
//! anything else (variables, statements, unknown functions) is refused.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};

/// Longest expression accepted.
pub const MAX_EXPRESSION: usize = 1_000;

/// Evaluates `expression`, or says why it cannot.
pub fn evaluate(expression: &str) -> Result<f64, String> {
    let e = expression.trim();
    if e.is_empty() {
        return Err("the expression is empty".into());
    }
    if e.len() > MAX_EXPRESSION {
        return Err(format!(
            "the expression is longer than {MAX_EXPRESSION} characters"
        ));
    }
    let expr = exmex::parse::<f64>(e).map_err(|err| format!("cannot parse `{e}`: {err}"))?;
    use exmex::Express;
    if !expr.var_names().is_empty() {
        return Err(format!(
            "unknown names in the expression: {} (only numbers, operators, functions and PI/E)",
            expr.var_names().join(", ")
        ));
    }
    let value = expr
        .eval(&[])
        .map_err(|err| format!("cannot evaluate `{e}`: {err}"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!(
            "`{e}` has no finite value (division by zero or overflow?)"
        ))
    }
}

/// Arguments of `evaluate`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EvaluateArgs {
    /// The expression, e.g. `(17.5 * 3) / 4` or `sqrt(2) * PI`.
    pub expression: String,
}

/// The server.
#[derive(Debug, Clone)]
pub struct Calculator {
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

impl Default for Calculator {
    fn default() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl Calculator {
    /// Evaluates an expression; a malformed one is a tool error the model can read.
    #[tool(
        description = "Evaluate an arithmetic or mathematical expression (+ - * / ^, parentheses, sqrt, sin, cos, tan, ln, log, exp, abs, PI, E) and return its value."
    )]
    fn evaluate(&self, Parameters(args): Parameters<EvaluateArgs>) -> CallToolResult {
        match evaluate(&args.expression) {
            Ok(v) => CallToolResult::success(vec![ContentBlock::text(format_number(v))]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e)]),
        }
    }
}

#[tool_handler]
impl ServerHandler for Calculator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Evaluates arithmetic and mathematical expressions exactly as written.",
        )
    }
}

/// Integers without a fraction print as integers.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_functions() {
        assert_eq!(evaluate("(17.5 * 3) / 4").unwrap(), 13.125);
        assert_eq!(evaluate("2^10").unwrap(), 1024.0);
        assert!((evaluate("sqrt(2) * sqrt(2)").unwrap() - 2.0).abs() < 1e-12);
        assert!((evaluate("sin(PI/2)").unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(format_number(evaluate("6*7").unwrap()), "42");
    }

    #[test]
    fn malformed_and_unsafe_input_is_refused() {
        assert!(evaluate("2 +* 3").unwrap_err().contains("cannot parse"));
        assert!(evaluate("").unwrap_err().contains("empty"));
        assert!(evaluate("x + 1").unwrap_err().contains("unknown names"));
        assert!(evaluate("std::process::exit(1)").is_err());
        assert!(evaluate("1/0").unwrap_err().contains("finite"));
        assert!(evaluate(&"1+".repeat(600)).unwrap_err().contains("longer"));
    }
}
