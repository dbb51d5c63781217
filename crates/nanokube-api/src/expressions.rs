//! Common Expression Language as Kubernetes runs it: the `cel` crate's standard library
//! with its strings, lists and math extensions, plus the parts of Kubernetes' own
//! libraries written here (lists, regex, quantity). CRD validation rules
//! ([`crate::crd`]), admission webhooks' match conditions and ValidatingAdmissionPolicies
//! evaluate through it; programs are compiled once per expression text.

use std::cmp::Ordering;

/// The `cel` crate, for callers that hold its values.
pub use cel;

use serde_json::Value;

/// Evaluate `expr` with `vars` bound (each a JSON value, as CEL sees it).
pub fn evaluate(expr: &str, vars: &[(&str, cel::Value)]) -> Result<cel::Value, String> {
    let program = program(expr)?;
    CEL_ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        for (name, value) in vars {
            ctx.add_variable_from_value(*name, value.clone());
        }
        program.execute(&ctx).map_err(|e| e.to_string())
    })
}

/// A CEL value as JSON (what a messageExpression or a variable gives back).
pub fn to_json(v: &cel::Value) -> Value {
    match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::List(items) => Value::Array(items.iter().map(to_json).collect()),
        cel::Value::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel::objects::Key::String(s) => s.to_string(),
                        cel::objects::Key::Int(i) => i.to_string(),
                        cel::objects::Key::Uint(u) => u.to_string(),
                        cel::objects::Key::Bool(b) => b.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

/// The CEL environment rules run in.
pub fn cel_env() -> std::sync::Arc<cel::Env> {
    static ENV: std::sync::OnceLock<std::sync::Arc<cel::Env>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        for ext in [cel::extensions::strings, cel::extensions::lists, cel::extensions::math] {
            let _ = env.add_extension(ext);
        }
        std::sync::Arc::new(env)
    })
    .clone()
}

/// A compiled rule, cached by its text (rules run on every write of their objects).
pub fn program(rule: &str) -> Result<std::sync::Arc<cel::Program>, String> {
    type Cache = std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<cel::Program>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().expect("rule cache").get(rule) {
        return Ok(p.clone());
    }
    let p = std::sync::Arc::new(cel_env().compile(rule).map_err(|e| e.to_string())?);
    cache.lock().expect("rule cache").insert(rule.to_string(), p.clone());
    Ok(p)
}

/// Kubernetes' list library (`isSorted`, `sum`, `min`, `max`) and regex library (`find`,
/// `findAll`), which cel-go has as Kubernetes extensions and the `cel` crate does not.
fn add_kubernetes_functions(ctx: &mut cel::Context<'_, '_>) {
    use cel::extractors::This;
    use cel::{ExecutionError, Value as V};
    type List = std::sync::Arc<Vec<V>>;
    fn pick(list: &[V], want: Ordering, name: &str) -> Result<V, ExecutionError> {
        let mut best: Option<&V> = None;
        for v in list {
            match best {
                None => best = Some(v),
                Some(b) => match v.partial_cmp(b) {
                    Some(o) if o == want => best = Some(v),
                    Some(_) => {}
                    None => return Err(ExecutionError::function_error(name, "list elements are not comparable")),
                },
            }
        }
        best.cloned().ok_or_else(|| ExecutionError::function_error(name, "empty list"))
    }
    let _ = ctx.add_function("isSorted", |This(list): This<List>| list.windows(2).all(|w| w[0].partial_cmp(&w[1]).is_some_and(|o| o != Ordering::Greater)));
    let _ = ctx.add_function("sum", |This(list): This<List>| -> Result<V, ExecutionError> {
        match list.first() {
            None | Some(V::Int(_)) => list.iter().try_fold(V::Int(0), |acc, v| match (acc, v) {
                (V::Int(a), V::Int(b)) => a.checked_add(*b).map(V::Int).ok_or_else(|| ExecutionError::function_error("sum", "integer overflow")),
                _ => Err(ExecutionError::function_error("sum", "mixed element types")),
            }),
            Some(V::UInt(_)) => list.iter().try_fold(V::UInt(0), |acc, v| match (acc, v) {
                (V::UInt(a), V::UInt(b)) => a.checked_add(*b).map(V::UInt).ok_or_else(|| ExecutionError::function_error("sum", "integer overflow")),
                _ => Err(ExecutionError::function_error("sum", "mixed element types")),
            }),
            Some(V::Float(_)) => list.iter().try_fold(V::Float(0.0), |acc, v| match (acc, v) {
                (V::Float(a), V::Float(b)) => Ok(V::Float(a + b)),
                _ => Err(ExecutionError::function_error("sum", "mixed element types")),
            }),
            Some(_) => Err(ExecutionError::function_error("sum", "elements must be numbers")),
        }
    });
    let _ = ctx.add_function("min", |This(list): This<List>| pick(&list, Ordering::Less, "min"));
    let _ = ctx.add_function("max", |This(list): This<List>| pick(&list, Ordering::Greater, "max"));
    let _ = ctx.add_function("find", |This(s): This<std::sync::Arc<String>>, re: std::sync::Arc<String>| -> Result<V, ExecutionError> {
        let re = regex_lite::Regex::new(&re).map_err(|e| ExecutionError::function_error("find", e.to_string()))?;
        Ok(V::String(std::sync::Arc::new(re.find(&s).map(|m| m.as_str().to_string()).unwrap_or_default())))
    });
    let _ = ctx.add_function("findAll", |This(s): This<std::sync::Arc<String>>, re: std::sync::Arc<String>| -> Result<V, ExecutionError> {
        let re = regex_lite::Regex::new(&re).map_err(|e| ExecutionError::function_error("findAll", e.to_string()))?;
        Ok(V::List(std::sync::Arc::new(re.find_iter(&s).map(|m| V::String(std::sync::Arc::new(m.as_str().to_string()))).collect())))
    });
}

/// A Kubernetes quantity (`500m`, `1Gi`, `1.5`, `2e3`) as a number, or `None` if the
/// text is not one (the grammar of `resource.ParseQuantity`).
pub fn parse_quantity(text: &str) -> Option<f64> {
    let digits_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
    if unsigned.is_empty() || unsigned == "." || unsigned.matches('.').count() > 1 || unsigned.contains(['+', '-']) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(value * scale)
}

/// Kubernetes' quantity library. A quantity is carried as a CEL `double` (exact up to
/// 2^53, which covers resource sizes in practice; upstream keeps an exact decimal).
fn add_quantity_functions(ctx: &mut cel::Context<'_, '_>) {
    use cel::extractors::This;
    use cel::{ExecutionError, Value as V};
    type Str = std::sync::Arc<String>;
    fn number(v: &V) -> Result<f64, ExecutionError> {
        match v {
            V::Float(f) => Ok(*f),
            V::Int(i) => Ok(*i as f64),
            V::UInt(u) => Ok(*u as f64),
            other => Err(ExecutionError::function_error("quantity", format!("not a quantity: {other:?}"))),
        }
    }
    let _ = ctx.add_function("quantity", |s: Str| {
        parse_quantity(&s).map(V::Float).ok_or_else(|| ExecutionError::function_error("quantity", format!("invalid quantity {s:?}")))
    });
    let _ = ctx.add_function("isQuantity", |s: Str| parse_quantity(&s).is_some());
    let _ = ctx.add_function("isGreaterThan", |This(a): This<f64>, b: V| number(&b).map(|b| a > b));
    let _ = ctx.add_function("isLessThan", |This(a): This<f64>, b: V| number(&b).map(|b| a < b));
    let _ = ctx.add_function("compareTo", |This(a): This<f64>, b: V| number(&b).map(|b| a.partial_cmp(&b).map_or(0i64, |o| o as i64)));
    let _ = ctx.add_function("add", |This(a): This<f64>, b: V| number(&b).map(|b| V::Float(a + b)));
    let _ = ctx.add_function("sub", |This(a): This<f64>, b: V| number(&b).map(|b| V::Float(a - b)));
    let _ = ctx.add_function("isInteger", |This(a): This<f64>| a.fract() == 0.0 && a.abs() <= i64::MAX as f64);
    let _ = ctx.add_function("asApproximateFloat", |This(a): This<f64>| a);
    let _ = ctx.add_function("asInteger", |This(a): This<f64>| {
        if a.fract() == 0.0 && a.abs() <= i64::MAX as f64 {
            Ok(a as i64)
        } else {
            Err(ExecutionError::function_error("asInteger", "cannot convert value to integer"))
        }
    });
}

thread_local! {
    /// The context every rule runs in a child scope of: the environment and the
    /// Kubernetes functions, registered once per thread rather than per evaluation.
    pub static CEL_ROOT: cel::Context<'static, 'static> = {
        let mut ctx = cel::Context::with_env(cel_env());
        add_kubernetes_functions(&mut ctx);
        add_quantity_functions(&mut ctx);
        ctx
    };
}

/// A JSON value as CEL sees it (integers as `int`, objects as maps).
pub fn cel_value(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(std::sync::Arc::new(a.iter().map(cel_value).collect())),
        Value::Object(m) => m.iter().map(|(k, x)| (k.clone(), cel_value(x))).collect::<std::collections::HashMap<String, cel::Value>>().into(),
    }
}
