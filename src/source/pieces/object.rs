//! Pieces of an object: one ranged GET each, with the ETag of the metadata first
//! read as `If-Match`, so that the store itself refuses a piece of another version.

use object_store::GetRange;

use super::changed;
use crate::budget::ByteBudget;
use crate::job::Failure;
use crate::source::Fetched;
use crate::source::object::OpenedObject;

#[derive(Debug)]
pub(super) struct ObjectPieces {
    object: OpenedObject,
}

impl ObjectPieces {
    pub(super) fn new(object: OpenedObject) -> Self {
        Self { object }
    }

    pub(super) fn size(&self) -> u64 {
        self.object.meta.size
    }

    pub(super) async fn read(
        &self,
        offset: u64,
        len: u64,
        budget: &ByteBudget,
    ) -> Result<Fetched, Failure> {
        let reservation = budget.reserve(len).await;
        let object = &self.object;
        let range = GetRange::Bounded(offset..offset + len);
        let result = object.get(range, object.meta.e_tag.clone()).await?;
        if result.meta.size != object.meta.size {
            let what = format!("{} bytes, now {}", object.meta.size, result.meta.size);
            return Err(changed(&object.shown, &what));
        }
        let bytes = object.body(result).take(len).await?;
        Ok(Fetched { bytes, reservation })
    }
}
