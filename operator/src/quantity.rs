//! Kubernetes resource quantities (`10Gi`, `500M`, `1.5Ti`, `1e9`) as numbers, to compare volume
//! sizes: the spec's `storage.size` against a claim's request and capacity. Only what storage
//! sizes use: a decimal number with an optional binary (`Ki`..`Ei`) or decimal (`k`..`E`)
//! suffix or exponent; milli-units (`m`) are not sizes and are refused.

/// `text` in bytes (rounded up to a whole byte); `None` when it is not a quantity.
pub fn bytes(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 10u128.pow(3),
        "M" => 10u128.pow(6),
        "G" => 10u128.pow(9),
        "T" => 10u128.pow(12),
        "P" => 10u128.pow(15),
        "E" => 10u128.pow(18),
        exponent if exponent.starts_with(['e', 'E']) => {
            10u128.checked_pow(exponent[1..].parse::<u32>().ok()?)?
        }
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut total = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let scale = 10u128.checked_pow(digits)?;
        let part = fraction.parse::<u128>().ok()?.checked_mul(multiplier)?;
        total = total.checked_add(part.div_ceil(scale))?;
    }
    Some(total)
}

/// Whether `a` is a larger quantity than `b`; `None` when either does not parse.
pub fn greater(a: &str, b: &str) -> Option<bool> {
    Some(bytes(a)? > bytes(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(bytes("10Gi"), Some(10 << 30));
        assert_eq!(bytes("512Mi"), Some(512 << 20));
        assert_eq!(bytes("1k"), Some(1000));
        assert_eq!(bytes("2G"), Some(2_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes(".5Ki"), Some(512));
    }

    #[test]
    fn what_is_not_a_size_is_refused() {
        for bad in ["", "Gi", "10 Gi", "10gi", "100m", "1.2.3Gi", "-1Gi", "10GiB", "."] {
            assert_eq!(bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_compare_across_units() {
        assert_eq!(greater("20Gi", "10Gi"), Some(true));
        assert_eq!(greater("10Gi", "10737418240"), Some(false));
        assert_eq!(greater("11G", "10Gi"), Some(true));
        assert_eq!(greater("x", "10Gi"), None);
    }
}
