//! Message templates: title, description and payload with `{{var}}` placeholders, stored per
//! app; a send names one and gives the variables. Rendering substitutes the text as is (no
//! escaping); the rendered message still goes through every message limit.

use super::{decode, encode, ApiStore, ApiStoreError};
use crate::ids::{random_secret, AppId};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// (app id, template id) -> [`Template`] as JSON.
const TEMPLATES: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("templates");

/// Most templates one app may keep.
pub const MAX_TEMPLATES_PER_APP: usize = 1000;
/// Longest template name, in bytes.
pub const MAX_TEMPLATE_NAME_BYTES: usize = 128;
/// Longest template text (each of title, description, payload), in bytes.
pub const MAX_TEMPLATE_TEXT_BYTES: usize = 8192;
/// Longest variable name, in bytes.
pub const MAX_VARIABLE_NAME_BYTES: usize = 64;

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), ApiStoreError> {
    txn.open_table(TEMPLATES)?;
    Ok(())
}

/// Why a template or its use is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template itself or a variable value is malformed; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// A placeholder has no value in `vars`.
    #[error("missing template variable `{0}`")]
    MissingVariable(String),
    /// The app has [`MAX_TEMPLATES_PER_APP`] templates already.
    #[error("an app may keep at most {MAX_TEMPLATES_PER_APP} templates")]
    TooMany,
}

/// A stored template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub template_id: String,
    #[serde(skip_serializing)]
    pub app_id: AppId,
    pub name: String,
    pub title: String,
    pub description: String,
    pub payload: String,
    pub created_at: u64,
}

/// A template's texts with the variables filled in.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rendered {
    pub title: String,
    pub description: String,
    pub payload: String,
}

/// One piece of a template text.
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn valid_variable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VARIABLE_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Splits `text` into literal text and `{{name}}` placeholders (spaces inside the braces
/// are allowed). A `{{` that does not open a valid placeholder is an error.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| TemplateError::Invalid(format!("unclosed `{{{{` in {text:?}")))?;
        let name = after[..close].trim();
        if !valid_variable(name) {
            return Err(TemplateError::Invalid(format!(
                "bad placeholder `{{{{{}}}}}`: a variable name is 1..={MAX_VARIABLE_NAME_BYTES} of A-Z a-z 0-9 _ - .",
                &after[..close]
            )));
        }
        out.push(Piece::Var(name));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The variable names `text` uses, in order of first use.
pub fn placeholders(text: &str) -> Result<Vec<String>, TemplateError> {
    let mut names: Vec<String> = Vec::new();
    for piece in pieces(text)? {
        if let Piece::Var(name) = piece {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// `text` with every placeholder replaced by its value in `vars` (strings as they are,
/// numbers and booleans as JSON writes them).
pub fn render(text: &str, vars: &serde_json::Map<String, serde_json::Value>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => match vars.get(name) {
                Some(serde_json::Value::String(s)) => out.push_str(s),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => out.push_str(&v.to_string()),
                Some(_) => {
                    return Err(TemplateError::Invalid(format!(
                        "template variable `{name}` must be a string, number or boolean"
                    )))
                }
                None => return Err(TemplateError::MissingVariable(name.to_owned())),
            },
        }
    }
    Ok(out)
}

impl Template {
    /// Every variable the template uses.
    pub fn variables(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for text in [&self.title, &self.description, &self.payload] {
            for name in placeholders(text).unwrap_or_default() {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// Fills in the variables; a missing one is an error that names it.
    pub fn render(&self, vars: &serde_json::Map<String, serde_json::Value>) -> Result<Rendered, TemplateError> {
        Ok(Rendered {
            title: render(&self.title, vars)?,
            description: render(&self.description, vars)?,
            payload: render(&self.payload, vars)?,
        })
    }
}

impl ApiStore {
    /// Checks and stores a new template of `app_id`; answers it with its fresh id.
    pub fn create_template(
        &self,
        app_id: AppId,
        name: &str,
        title: &str,
        description: &str,
        payload: &str,
        now_s: u64,
    ) -> Result<Template, ApiStoreError> {
        if name.is_empty() || name.len() > MAX_TEMPLATE_NAME_BYTES {
            return Err(TemplateError::Invalid(format!("name must be 1..={MAX_TEMPLATE_NAME_BYTES} bytes")).into());
        }
        for (field, text) in [("title", title), ("description", description), ("payload", payload)] {
            if text.len() > MAX_TEMPLATE_TEXT_BYTES {
                return Err(TemplateError::Invalid(format!("{field} is over {MAX_TEMPLATE_TEXT_BYTES} bytes")).into());
            }
            pieces(text).map_err(|e| TemplateError::Invalid(format!("{field}: {e}")))?;
        }
        if title.is_empty() && description.is_empty() && payload.is_empty() {
            return Err(TemplateError::Invalid("a template needs a title, a description or a payload".into()).into());
        }
        let template = Template {
            template_id: random_secret::<8>(),
            app_id,
            name: name.to_owned(),
            title: title.to_owned(),
            description: description.to_owned(),
            payload: payload.to_owned(),
            created_at: now_s,
        };
        // `app_id` is not serialized for clients; keep it in the row.
        let mut row = serde_json::to_value(&template).map_err(|e| ApiStoreError::Malformed(e.to_string()))?;
        row["app_id"] = app_id.into();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TEMPLATES)?;
            let count = table.range((app_id, "")..(app_id.saturating_add(1), ""))?.count();
            if count >= MAX_TEMPLATES_PER_APP {
                return Err(TemplateError::TooMany.into());
            }
            table.insert((app_id, template.template_id.as_str()), &encode(&row)?[..])?;
        }
        txn.commit()?;
        Ok(template)
    }

    /// The app's template `template_id`; `None` if unknown or another app's.
    pub fn template(&self, app_id: AppId, template_id: &str) -> Result<Option<Template>, ApiStoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(TEMPLATES)?;
        let row = table.get((app_id, template_id))?;
        row.map(|v| decode(v.value())).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_dir::TempDir;
    use serde_json::json;

    fn vars(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn placeholders_render_and_missing_ones_are_named() {
        let v = vars(json!({"name": "Ann", "n": 3, "vip": true}));
        assert_eq!(render("Hi {{name}}, {{ n }} new{{vip}}", &v).unwrap(), "Hi Ann, 3 newtrue");
        assert_eq!(render("no placeholders { } }}", &v).unwrap(), "no placeholders { } }}");
        assert_eq!(render("{{name}}{{name}}", &v).unwrap(), "AnnAnn");
        assert_eq!(render("Hi {{who}}", &v), Err(TemplateError::MissingVariable("who".into())));
        assert!(render("Hi {{x}}", &vars(json!({"x": [1]}))).is_err());
        assert!(placeholders("Hi {{name").is_err());
        assert!(placeholders("Hi {{a b}}").is_err());
        assert!(placeholders("Hi {{}}").is_err());
        assert_eq!(placeholders("{{a}} {{b}} {{a}}").unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn templates_are_per_app_and_survive_reopen() {
        let dir = TempDir::new("tpl");
        let id = {
            let store = ApiStore::open(&dir.0).unwrap();
            let t = store.create_template(7, "welcome", "Hi {{name}}", "You have {{n}} messages", "{}", 5).unwrap();
            assert_eq!(t.template_id.len(), 16);
            assert_eq!(t.variables(), vec!["name", "n"]);
            t.template_id
        };
        let store = ApiStore::open(&dir.0).unwrap();
        let t = store.template(7, &id).unwrap().unwrap();
        assert_eq!((t.app_id, t.name.as_str(), t.created_at), (7, "welcome", 5));
        assert_eq!(store.template(8, &id).unwrap(), None);
        let r = t.render(&vars(json!({"name": "Bo", "n": 2}))).unwrap();
        assert_eq!(
            r,
            Rendered { title: "Hi Bo".into(), description: "You have 2 messages".into(), payload: "{}".into() }
        );
        let err = t.render(&vars(json!({"name": "Bo"}))).unwrap_err();
        assert_eq!(err.to_string(), "missing template variable `n`");
    }

    #[test]
    fn bad_templates_are_refused() {
        let dir = TempDir::new("tplbad");
        let store = ApiStore::open(&dir.0).unwrap();
        assert!(store.create_template(7, "", "t", "", "", 0).is_err());
        assert!(store.create_template(7, "n", "Hi {{name", "", "", 0).is_err());
        assert!(store.create_template(7, "n", "", "", "", 0).is_err());
        assert!(store.create_template(7, "n", &"x".repeat(MAX_TEMPLATE_TEXT_BYTES + 1), "", "", 0).is_err());
    }
}
