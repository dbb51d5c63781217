//! `resource.Quantity` as kube-apiserver and Go clients hold and write it: upstream's
//! `ParseQuantity` (its `int64Amount` path, the string it keeps when that was already
//! canonical, and its `inf.Dec` path rounded to nano units) and `CanonicalizeBytes`, in
//! exact integer arithmetic. kube-apiserver decodes every quantity it is sent and
//! writes it back this way, so `cpu: 0.5` is stored and served as `"500m"` and
//! `memory: 1.5Gi` as `"1536Mi"` ([`stored_form`]); [`held`] is the value a Go client
//! then decodes, which `go-spew` dumps spell out (pod-template-hash).

/// Go's `ErrFormatWrong`.
pub const FORMAT_WRONG: &str = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
/// Go's `ErrSuffix`.
pub const SUFFIX_WRONG: &str = "unable to parse quantity's suffix";

/// A quantity's `Format`.
#[derive(Clone, Copy, PartialEq, Debug, Default)]
pub enum Format {
    #[default]
    Unset,
    DecimalExponent,
    BinarySI,
    DecimalSI,
}

/// A `resource.Quantity` held as an `int64Amount` (value × 10^scale), with the string
/// `ParseQuantity` keeps when it was already canonical; or, when `dec` is set, as an
/// `inf.Dec` (sign and unscaled value at scale 9, where `ParseQuantity` rounds it).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Held {
    /// The `int64Amount`'s value.
    pub value: i64,
    /// The `int64Amount`'s scale (a power of ten).
    pub scale: i32,
    /// The format it is written back in.
    pub format: Format,
    /// The string kept from parsing (`s`), when it was already canonical.
    pub cached: Option<String>,
    /// Set when held as an `inf.Dec`: its sign and unscaled value at scale 9.
    pub dec: Option<(bool, u128)>,
}

/// What a Go client (kube-controller-manager) holds after decoding a quantity
/// kube-apiserver stored as `stored` (its [`stored_form`]).
pub fn held(stored: &str) -> Option<Held> {
    if let Some(q) = parse_quantity(stored) {
        return Some(q);
    }
    let (exact, format) = parse_dec(stored)?;
    let unscaled = exact.mantissa.checked_mul(10u128.checked_pow(u32::try_from(exact.exp10 + 9).ok()?)?)?;
    Some(Held { format, dec: Some((exact.negative, unscaled)), ..Held::default() })
}

/// The string kube-apiserver stores and serves for a quantity written as `text` (Go's
/// `MarshalJSON` of what `UnmarshalJSON`/`ParseQuantity` made of it): `Err` with
/// upstream's reason when Go refuses it, `Ok(None)` when Go takes it but its value is
/// beyond the arithmetic here (more than 38 digits), to be kept as written.
pub fn stored_form(text: &str) -> Result<Option<String>, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err(FORMAT_WRONG);
    }
    let (_, _, _, suffix) = split_quantity(text).ok_or(FORMAT_WRONG)?;
    interpret_suffix(suffix).ok_or(SUFFIX_WRONG)?;
    if let Some(q) = parse_quantity(text) {
        let exact = Exact { negative: q.value < 0, mantissa: u128::from(q.value.unsigned_abs()), exp10: q.scale };
        return Ok(q.cached.or_else(|| canonical(exact, q.format)));
    }
    Ok(parse_dec(text).and_then(|(exact, format)| canonical(exact, format)))
}

/// `ParseQuantity`'s `inf.Dec` path: the exact value, rounded up to nano units (so its
/// `exp10` is at least -9), binary ones capped at the int64 maximum, and those below
/// one written in decimal.
fn parse_dec(text: &str) -> Option<(Exact, Format)> {
    let (positive, num, denom, suffix) = split_quantity(text)?;
    let (base, exponent, mut format) = interpret_suffix(suffix)?;
    let digits = format!("{num}{denom}");
    let mut exact = Exact { negative: !positive, mantissa: digits.parse().ok()?, exp10: -(denom.len() as i32) };
    if base == 10 {
        exact.exp10 = exact.exp10.checked_add(exponent)?;
    } else {
        exact.mantissa = exact.mantissa.checked_mul(1u128.checked_shl(u32::try_from(exponent).ok()?)?)?;
    }
    if exact.exp10 < -9 {
        let divisor = 10u128.checked_pow((-9 - exact.exp10) as u32)?;
        exact.mantissa = exact.mantissa / divisor + u128::from(!exact.mantissa.is_multiple_of(divisor));
        exact.exp10 = -9;
    }
    if format == Format::BinarySI {
        if exact.cmp_magnitude(i64::MAX as u128).is_gt() {
            exact = Exact { negative: exact.negative, mantissa: i64::MAX as u128, exp10: 0 };
        }
        if exact.mantissa != 0 && exact.less_than(1) {
            format = Format::DecimalSI;
        }
    }
    Some((exact, format))
}

/// An exact decimal, `±mantissa × 10^exp10`.
#[derive(Clone, Copy, Debug)]
struct Exact {
    negative: bool,
    mantissa: u128,
    exp10: i32,
}

impl Exact {
    /// The magnitude when it is a whole number that fits.
    fn integer(self) -> Option<u128> {
        if self.exp10 >= 0 {
            return self.mantissa.checked_mul(10u128.checked_pow(self.exp10 as u32)?);
        }
        let divisor = 10u128.checked_pow((-self.exp10) as u32)?;
        self.mantissa.is_multiple_of(divisor).then_some(self.mantissa / divisor)
    }

    /// The magnitude compared with `n` (a side too large for `u128` is the larger).
    fn cmp_magnitude(self, n: u128) -> std::cmp::Ordering {
        let scale = |x: u128, e: i32| 10u128.checked_pow(e as u32).and_then(|p| x.checked_mul(p));
        let (left, right) = if self.exp10 >= 0 { (scale(self.mantissa, self.exp10), Some(n)) } else { (Some(self.mantissa), scale(n, -self.exp10)) };
        match (left, right) {
            (Some(l), Some(r)) => l.cmp(&r),
            (None, _) => std::cmp::Ordering::Greater,
            (_, None) => std::cmp::Ordering::Less,
        }
    }

    /// Whether the magnitude is below `n`.
    fn less_than(self, n: u128) -> bool {
        self.cmp_magnitude(n).is_lt()
    }
}

/// Upstream's `parseQuantityString`: sign, digits, fraction, suffix.
fn split_quantity(s: &str) -> Option<(bool, &str, &str, &str)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut positive = true;
    match b.first() {
        Some(b'-') => {
            positive = false;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= b.len() {
        return Some((positive, "0", "", ""));
    }
    let start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = if pos == start { "0" } else { &s[start..pos] };
    let mut denom = "";
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let d = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[d..pos];
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() && (b[pos] == b'-' || b[pos] == b'+') {
        pos += 1;
    }
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < b.len() {
        return None;
    }
    Some((positive, num, denom, &s[suffix_start..]))
}

/// `(base, exponent, format)` of a suffix.
fn interpret_suffix(suffix: &str) -> Option<(u32, i32, Format)> {
    let decimal = |e| Some((10, e, Format::DecimalSI));
    let binary = |e| Some((2, e, Format::BinarySI));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            // Go's ParseInt takes a sign; the exponent is then truncated to int32.
            let e: i64 = s[1..].parse().ok()?;
            Some((10, e as i32, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// Upstream's `ParseQuantity` on its `int64Amount` path; `None` for what it would parse
/// into an `inf.Dec` (or refuse).
fn parse_quantity(s: &str) -> Option<Held> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Held { format: Format::DecimalSI, cached: Some(s.to_string()), ..Held::default() });
    }
    let (positive, num, denom, suffix) = split_quantity(s)?;
    let (_, exponent, format) = interpret_suffix(suffix)?;
    // More digits than an int64 holds take the inf.Dec path anyway.
    let digits = i32::try_from(num.len() + denom.len()).ok().filter(|d| *d <= 40)?;
    let (mut scale, precision, mantissa) = match format {
        Format::BinarySI if exponent >= 0 && denom.is_empty() => {
            (0, 15 - digits - (exponent as f32 * 3.0 / 10.0) as i32 - 1, 1i64.checked_shl(exponent as u32)?)
        }
        Format::BinarySI => (0, -1, 1),
        _ => (exponent, 18 - digits, 1),
    };
    if precision < 0 {
        return None;
    }
    scale = scale.checked_sub(denom.len() as i32)?;
    if scale < -9 {
        return None;
    }
    let shifted = format!("{num}{denom}");
    let value: i64 = shifted.parse().ok()?;
    let mut result = value.checked_mul(mantissa)?;
    if !positive {
        result = -result;
    }
    let canonical = match format {
        Format::BinarySI => exponent % 10 == 0 && value & 0x07 != 0,
        _ => scale % 3 == 0 && !shifted.ends_with("000") && !shifted.starts_with('0'),
    };
    Some(Held { value: result, scale, format, cached: canonical.then(|| s.to_string()), dec: None })
}

/// Upstream's `CanonicalizeBytes`: the string kube-apiserver writes for a value held in
/// `format` (`None` where it would not fit the arithmetic here).
fn canonical(q: Exact, format: Format) -> Option<String> {
    if q.mantissa == 0 {
        return Some("0".to_string());
    }
    let sign = if q.negative { "-" } else { "" };
    let mut format = format;
    if format == Format::BinarySI && (q.less_than(1024) || q.integer().is_none()) {
        format = Format::DecimalSI;
    }
    if format == Format::BinarySI {
        let mut amount = q.integer()?;
        let mut exponent = 0;
        while amount >= 1024 && amount % 1024 == 0 {
            amount /= 1024;
            exponent += 1;
        }
        // Upstream has no suffix for 2^0 in its binary table and writes none.
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].get(exponent).copied().unwrap_or("");
        return Some(format!("{sign}{amount}{suffix}"));
    }
    let (mut amount, mut exponent) = (q.mantissa, q.exp10);
    while amount >= 10 && amount % 10 == 0 {
        amount /= 10;
        exponent = exponent.checked_add(1)?;
    }
    while exponent % 3 != 0 {
        amount = amount.checked_mul(10)?;
        exponent = exponent.checked_sub(1)?;
    }
    let suffix = match format {
        Format::DecimalExponent if exponent == 0 => String::new(),
        Format::DecimalExponent => format!("e{exponent}"),
        // A decimal exponent outside upstream's table gets no suffix there either.
        _ => match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => "",
        }
        .to_string(),
    };
    Some(format!("{sign}{amount}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(text: &str) -> String {
        stored_form(text).unwrap().unwrap()
    }

    #[test]
    fn quantities_are_stored_as_kube_apiserver_writes_them() {
        for (written, want) in [
            ("0.5", "500m"),
            ("500m", "500m"),
            ("1000m", "1"),
            ("1", "1"),
            ("1000", "1k"),
            ("1024Mi", "1Gi"),
            ("128Mi", "128Mi"),
            ("1536Ki", "1536Ki"),
            ("100M", "100M"),
            ("2e3", "2e3"),
            ("1e3", "1e3"),
            ("0.1", "100m"),
            ("1.5", "1500m"),
            ("512", "512"),
            ("0m", "0"),
            ("+500m", "+500m"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("1.5n", "2n"),
            ("-1.5", "-1500m"),
            ("100Gi", "100Gi"),
            ("1048576000", "1048576k"),
            (" 2 ", "2"),
        ] {
            assert_eq!(stored(written), want, "{written}");
        }
        assert_eq!(held("1Gi").unwrap().cached.as_deref(), Some("1Gi"));
        assert_eq!(held("128Mi").unwrap().cached, None);
        assert!(parse_quantity("1.5Gi").is_none(), "Go holds it as an inf.Dec until stored");
        assert_eq!(held("1Ei").unwrap().dec, Some((false, (1u128 << 60) * 1_000_000_000)), "an inf.Dec even once stored");
    }

    #[test]
    fn what_go_refuses_is_refused_in_its_words() {
        for bad in ["12x", "", "abc", "1.2.3", "1Mb"] {
            assert_eq!(stored_form(bad), Err(FORMAT_WRONG), "{bad:?}");
        }
        for bad in ["1Ki1", "1Mi-", "1ee", "--1"] {
            assert_eq!(stored_form(bad), Err(SUFFIX_WRONG), "{bad:?}");
        }
        assert_eq!(stored_form("1234567890123456789012345678901234567890123"), Ok(None), "Go takes it; kept as written");
    }

    /// A bounded fuzz: any string gets an answer, never a panic (overflowing exponents,
    /// huge digit strings).
    #[test]
    fn mutated_quantities_never_panic() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let seeds = [
            "1.5Gi",
            "500m",
            "1e-2147483648",
            "10e2147483647",
            "9223372036854775807Ei",
            "-0.000000000001",
            "+01.10E3",
            "1.",
            ".5",
            "99999999999999999999999999999999999999999",
        ];
        let alphabet = b"0123456789.+-eEinumkKMGTP ";
        for _ in 0..50_000 {
            let mut q: Vec<u8> = seeds[rng.usize(..seeds.len())].bytes().collect();
            for _ in 0..rng.usize(0..4) {
                let at = rng.usize(..=q.len());
                match rng.u8(..3) {
                    0 => q.insert(at, alphabet[rng.usize(..alphabet.len())]),
                    1 if at < q.len() => drop(q.remove(at)),
                    _ => q.truncate(at),
                }
            }
            let q = String::from_utf8_lossy(&q).into_owned();
            if let Ok(Some(s)) = stored_form(&q) {
                let _ = held(&s);
            }
        }
    }
}
