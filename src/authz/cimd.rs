//! TEMPORARY: replaced by the hardened resolver (branch `cimd`).
use crate::store::Client;

pub(crate) struct CimdPolicy;

#[derive(Debug)]
pub(crate) struct Refused;

impl Refused {
    pub(crate) fn reason(&self) -> &'static str {
        "client metadata documents are not supported yet"
    }
}

pub(crate) fn resolve(_p: &CimdPolicy, _url: &str, _now: i64) -> Result<Client, Refused> {
    Err(Refused)
}
