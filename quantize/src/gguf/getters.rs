//! Typed metadata getters whose errors name the file, the key and what was expected.
//!
//! `get_X(key)` fails when the key is missing or has the wrong type; `get_X_opt(key)` returns
//! `Ok(None)` when it is missing and fails only on the wrong type.

use anyhow::{anyhow, Result};

use super::reader::GgufFile;
use super::value::Value;

/// Longest rendering of a wrong value in an error message (chat templates are kilobytes).
const MAX_SHOWN: usize = 80;

impl GgufFile {
    /// Convert `key`'s value with `conv`; `expected` describes what `conv` accepts.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match conv(value) {
            Some(v) => Ok(Some(v)),
            None => Err(anyhow!(
                "{}: metadata key '{key}': expected {expected}, found {} {}",
                self.path_display(),
                value.type_description(),
                shown(value)
            )),
        }
    }

    fn required<T>(&self, key: &str, expected: &str, value: Result<Option<T>>) -> Result<T> {
        value?.ok_or_else(|| {
            anyhow!(
                "{}: metadata key '{key}' is missing (expected {expected})",
                self.path_display()
            )
        })
    }

    /// Any integer type holding a non-negative value.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, U64, Value::as_u64)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.required(key, U64, self.get_u64_opt(key))
    }

    /// Any integer type holding a value in `0..=u32::MAX`.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, U32, |v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.required(key, U32, self.get_u32_opt(key))
    }

    /// Any integer type holding a value that fits `usize` (counts, lengths).
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, USIZE, |v| {
            v.as_u64().and_then(|n| usize::try_from(n).ok())
        })
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.required(key, USIZE, self.get_usize_opt(key))
    }

    /// `f32`, or `f64` rounded.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, F32, Value::as_f32)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.required(key, F32, self.get_f32_opt(key))
    }

    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, STR, Value::as_str)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.required(key, STR, self.get_str_opt(key))
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, BOOL, Value::as_bool)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.required(key, BOOL, self.get_bool_opt(key))
    }

    pub fn get_str_array_opt(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, STR_ARRAY, |v| {
            v.as_array()?.iter().map(Value::as_str).collect()
        })
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.required(key, STR_ARRAY, self.get_str_array_opt(key))
    }

    /// An array of any integer type whose values all fit `i32`.
    pub fn get_i32_array_opt(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.typed(key, I32_ARRAY, |v| {
            let items = v.as_array()?.iter();
            items
                .map(|x| x.as_i64().and_then(|n| i32::try_from(n).ok()))
                .collect()
        })
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.required(key, I32_ARRAY, self.get_i32_array_opt(key))
    }

    /// An array of `f32` (or `f64`, rounded).
    pub fn get_f32_array_opt(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.typed(key, F32_ARRAY, |v| {
            v.as_array()?.iter().map(Value::as_f32).collect()
        })
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.required(key, F32_ARRAY, self.get_f32_array_opt(key))
    }
}

const U64: &str = "a non-negative integer";
const U32: &str = "a non-negative integer that fits u32";
const USIZE: &str = "a non-negative integer that fits usize";
const F32: &str = "a float (f32 or f64)";
const STR: &str = "a string";
const BOOL: &str = "a bool";
const STR_ARRAY: &str = "an array of strings";
const I32_ARRAY: &str = "an array of integers that fit i32";
const F32_ARRAY: &str = "an array of floats";

/// `value` rendered for an error message, cut to [`MAX_SHOWN`] characters.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}
