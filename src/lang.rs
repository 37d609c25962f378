//! The languages `marco translate` knows: Marco-LLM's 29 plus Swahili and Yoruba.

use anyhow::{bail, Result};

/// A language with its codes and the English name used in prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code, e.g. `zh`.
    pub iso1: &'static str,
    /// ISO 639-3 codes (the macrolanguage first, then the individual language FLORES uses).
    pub iso3: &'static [&'static str],
    /// FLORES-200 code, e.g. `zho_Hans`.
    pub flores: &'static str,
    /// English name, as it appears in the prompt.
    pub name: &'static str,
}

const fn lang(
    iso1: &'static str,
    iso3: &'static [&'static str],
    flores: &'static str,
    name: &'static str,
) -> Language {
    Language {
        iso1,
        iso3,
        flores,
        name,
    }
}

/// All supported languages, Marco-LLM's order, then Swahili and Yoruba.
pub const LANGUAGES: &[Language] = &[
    lang("en", &["eng"], "eng_Latn", "English"),
    lang("zh", &["zho", "cmn"], "zho_Hans", "Chinese"),
    lang("ar", &["ara", "arb"], "arb_Arab", "Arabic"),
    lang("de", &["deu"], "deu_Latn", "German"),
    lang("es", &["spa"], "spa_Latn", "Spanish"),
    lang("fr", &["fra"], "fra_Latn", "French"),
    lang("ko", &["kor"], "kor_Hang", "Korean"),
    lang("ja", &["jpn"], "jpn_Jpan", "Japanese"),
    lang("pt", &["por"], "por_Latn", "Portuguese"),
    lang("tr", &["tur"], "tur_Latn", "Turkish"),
    lang("id", &["ind"], "ind_Latn", "Indonesian"),
    lang("it", &["ita"], "ita_Latn", "Italian"),
    lang("nl", &["nld"], "nld_Latn", "Dutch"),
    lang("pl", &["pol"], "pol_Latn", "Polish"),
    lang("ru", &["rus"], "rus_Cyrl", "Russian"),
    lang("vi", &["vie"], "vie_Latn", "Vietnamese"),
    lang("th", &["tha"], "tha_Thai", "Thai"),
    lang("he", &["heb"], "heb_Hebr", "Hebrew"),
    lang("uk", &["ukr"], "ukr_Cyrl", "Ukrainian"),
    lang("ms", &["msa", "zsm"], "zsm_Latn", "Malay"),
    lang("bn", &["ben"], "ben_Beng", "Bengali"),
    lang("cs", &["ces"], "ces_Latn", "Czech"),
    lang("ur", &["urd"], "urd_Arab", "Urdu"),
    lang("kk", &["kaz"], "kaz_Cyrl", "Kazakh"),
    lang("el", &["ell"], "ell_Grek", "Greek"),
    lang("ro", &["ron"], "ron_Latn", "Romanian"),
    lang("hu", &["hun"], "hun_Latn", "Hungarian"),
    lang("ne", &["nep", "npi"], "npi_Deva", "Nepali"),
    lang("az", &["aze", "azj"], "azj_Latn", "Azerbaijani"),
    lang("sw", &["swa", "swh"], "swh_Latn", "Swahili"),
    lang("yo", &["yor"], "yor_Latn", "Yoruba"),
];

impl Language {
    /// Finds a language by ISO 639-1, ISO 639-3, FLORES code or English name (any case).
    pub fn find(query: &str) -> Result<Language> {
        let q = query.trim();
        let hit = LANGUAGES.iter().find(|l| {
            l.iso1.eq_ignore_ascii_case(q)
                || l.iso3.iter().any(|c| c.eq_ignore_ascii_case(q))
                || l.flores.eq_ignore_ascii_case(q)
                || l.name.eq_ignore_ascii_case(q)
        });
        match hit {
            Some(l) => Ok(*l),
            None => bail!(
                "unknown language '{query}': use an ISO 639-1 code, ISO 639-3 / FLORES code or \
                 English name, one of: {}",
                LANGUAGES
                    .iter()
                    .map(|l| l.iso1)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_every_kind_of_code() {
        for q in ["zh", "ZHO", "zho_Hans", "chinese"] {
            assert_eq!(Language::find(q).unwrap().name, "Chinese");
        }
        assert_eq!(Language::find("npi").unwrap().iso1, "ne");
        assert_eq!(Language::find("Swahili").unwrap().flores, "swh_Latn");
    }

    #[test]
    fn unknown_language_names_the_query() {
        let e = Language::find("klingon").unwrap_err().to_string();
        assert!(e.contains("klingon") && e.contains(" en "), "{e}");
    }

    #[test]
    fn thirty_one_languages_with_unique_codes() {
        assert_eq!(LANGUAGES.len(), 31);
        let mut codes: Vec<_> = LANGUAGES.iter().map(|l| l.iso1).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), 31);
    }
}
