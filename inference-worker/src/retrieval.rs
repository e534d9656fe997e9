//! Retrieval over DataNet records: each record's embedding ([`crate::embeddings`]) kept in
//! memory, normalized, and searched exactly (the cosine similarity of the query with every
//! record of the DataNets asked for). A record is embedded on its first
//! [`crate::embeddings::EmbeddingModel::max_tokens`] tokens and served whole as a source
//! document ([`crate::attribution`]).

use std::{collections::HashMap, path::Path, sync::RwLock};

use serde::{Deserialize, Serialize};

use crate::{
	embedding_service::EmbeddingService,
	embeddings::{normalize, EmbeddingModel},
	error::{Error, Result},
};

/// The most bytes of a record's text.
pub const MAX_RECORD_BYTES: usize = 8192;
/// The most bytes of a record's id or DataNet.
pub const MAX_ID_BYTES: usize = 128;
/// The most records a search returns.
pub const MAX_TOP_K: usize = 64;

/// A DataNet record as retrieval serves it.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct Record {
	/// Its id (unique in the index).
	pub id: String,
	/// The DataNet it belongs to.
	pub datanet: String,
	/// What it says.
	pub text: String,
}

impl Record {
	/// Checks the record's sizes; `what` names it in the error.
	pub fn check(&self, what: &str) -> Result<()> {
		for (field, value) in [("id", &self.id), ("datanet", &self.datanet)] {
			if value.is_empty() || value.len() > MAX_ID_BYTES {
				return Err(Error::Request(format!(
					"{what}: its {field} has {} bytes (1 to {MAX_ID_BYTES})",
					value.len()
				)));
			}
		}
		if self.text.trim().is_empty() || self.text.len() > MAX_RECORD_BYTES {
			return Err(Error::Request(format!(
				"{what}: its text has {} bytes (1 to {MAX_RECORD_BYTES}, not blank)",
				self.text.len()
			)));
		}
		Ok(())
	}
}

/// The records and their vectors.
#[derive(Debug)]
pub struct VectorIndex {
	dimensions: usize,
	capacity: usize,
	records: Vec<Record>,
	/// `records[i]`'s vector at `vectors[i * dimensions..]`.
	vectors: Vec<f32>,
	positions: HashMap<String, usize>,
}

impl VectorIndex {
	/// An empty index of vectors of `dimensions`, holding at most `capacity` records.
	pub fn new(dimensions: usize, capacity: usize) -> Self {
		Self {
			dimensions,
			capacity,
			records: Vec::new(),
			vectors: Vec::new(),
			positions: HashMap::new(),
		}
	}

	/// The records held.
	pub fn len(&self) -> usize {
		self.records.len()
	}

	/// Whether it holds none.
	pub fn is_empty(&self) -> bool {
		self.records.is_empty()
	}

	/// The most records it holds.
	pub fn capacity(&self) -> usize {
		self.capacity
	}

	/// The record of `id`.
	pub fn get(&self, id: &str) -> Option<&Record> {
		self.positions.get(id).map(|&i| &self.records[i])
	}

	/// Adds each record with its vector (kept normalized), or replaces the record of the same
	/// id: all or none (an error leaves the index as it was). Returns how many were new.
	pub fn insert(&mut self, entries: Vec<(Record, Vec<f32>)>) -> Result<usize> {
		let mut new_ids = std::collections::HashSet::new();
		for (i, (record, vector)) in entries.iter().enumerate() {
			if vector.len() != self.dimensions {
				return Err(Error::Request(format!(
					"record {i}: a vector of {} dimensions, not {}",
					vector.len(),
					self.dimensions
				)));
			}
			if !self.positions.contains_key(&record.id) {
				new_ids.insert(record.id.as_str());
			}
		}
		if self.records.len() + new_ids.len() > self.capacity {
			return Err(Error::Request(format!(
				"{} new records would make {}, more than the index holds ({})",
				new_ids.len(),
				self.records.len() + new_ids.len(),
				self.capacity
			)));
		}
		let added = new_ids.len();
		for (record, mut vector) in entries {
			normalize(&mut vector);
			match self.positions.get(&record.id) {
				Some(&i) => {
					self.vectors[i * self.dimensions..][..self.dimensions].copy_from_slice(&vector);
					self.records[i] = record;
				}
				None => {
					self.positions.insert(record.id.clone(), self.records.len());
					self.records.push(record);
					self.vectors.extend_from_slice(&vector);
				}
			}
		}
		Ok(added)
	}

	/// Removes the record of `id`; whether there was one.
	pub fn remove(&mut self, id: &str) -> bool {
		let Some(i) = self.positions.remove(id) else { return false };
		let last = self.records.len() - 1;
		self.records.swap_remove(i);
		let d = self.dimensions;
		if i != last {
			self.vectors.copy_within(last * d..(last + 1) * d, i * d);
			self.positions.insert(self.records[i].id.clone(), i);
		}
		self.vectors.truncate(last * d);
		true
	}

	/// The `k` records most similar to `query` (highest cosine similarity first; ties by id),
	/// among those of `datanets` (all when empty).
	pub fn search(&self, query: &[f32], k: usize, datanets: &[String]) -> Vec<(&Record, f32)> {
		let d = self.dimensions;
		let mut query = query.to_vec();
		normalize(&mut query);
		let mut scored: Vec<(&Record, f32)> = self
			.records
			.iter()
			.enumerate()
			.filter(|(_, r)| datanets.is_empty() || datanets.contains(&r.datanet))
			.map(|(i, r)| {
				let v = &self.vectors[i * d..][..d];
				(r, v.iter().zip(&query).map(|(a, b)| a * b).sum::<f32>())
			})
			.collect();
		let by_score =
			|a: &(&Record, f32), b: &(&Record, f32)| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id));
		if scored.len() > k {
			scored.select_nth_unstable_by(k, by_score);
			scored.truncate(k);
		}
		scored.sort_by(by_score);
		scored
	}
}

/// Reads records from a JSON-lines file (one `{"id", "datanet", "text"}` a line; blank lines
/// skipped), each checked.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
	let text = std::fs::read_to_string(path)
		.map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
	text.lines()
		.enumerate()
		.filter(|(_, line)| !line.trim().is_empty())
		.map(|(i, line)| {
			let what = format!("{} line {}", path.display(), i + 1);
			let record: Record =
				serde_json::from_str(line).map_err(|e| Error::Format(format!("{what}: {e}")))?;
			record.check(&what).map_err(|e| Error::Format(e.to_string()))?;
			Ok(record)
		})
		.collect()
}

/// `records` with their vectors: each embedded by `model` on its first tokens (as many as the
/// model takes).
pub fn embed_records(
	model: &EmbeddingModel,
	records: Vec<Record>,
) -> Result<Vec<(Record, Vec<f32>)>> {
	let inputs = records
		.iter()
		.map(|r| model.tokenize(&r.text, Some(model.max_tokens())))
		.collect::<Result<Vec<_>>>()?;
	Ok(records.into_iter().zip(model.embed(&inputs)?).collect())
}

/// Adds `records` to `index` (or replaces those of the same ids), each checked and embedded by
/// `service` on its first tokens: all or none. Returns how many were new.
pub async fn add_records(
	service: &EmbeddingService,
	index: &RwLock<VectorIndex>,
	records: Vec<Record>,
) -> Result<usize> {
	let mut inputs = Vec::with_capacity(records.len());
	for (i, record) in records.iter().enumerate() {
		record.check(&format!("record {i}"))?;
		inputs.push(service.model().tokenize(&record.text, Some(service.max_tokens()))?);
	}
	let vectors = service.embed(inputs).await?;
	let mut index = index.write().unwrap_or_else(|poisoned| poisoned.into_inner());
	index.insert(records.into_iter().zip(vectors).collect())
}

#[cfg(test)]
mod tests {
	use super::*;

	fn record(id: &str, datanet: &str) -> Record {
		Record { id: id.into(), datanet: datanet.into(), text: format!("text of {id}") }
	}

	#[test]
	fn inserts_replaces_removes_and_searches() {
		let mut index = VectorIndex::new(2, 3);
		index
			.insert(vec![
				(record("a", "x"), vec![1.0, 0.0]),
				(record("b", "x"), vec![0.6, 0.8]),
				(record("c", "y"), vec![0.0, 1.0]),
			])
			.unwrap();
		let ids =
			|hits: Vec<(&Record, f32)>| hits.iter().map(|(r, _)| r.id.clone()).collect::<Vec<_>>();
		assert_eq!(ids(index.search(&[1.0, 0.0], 2, &[])), ["a", "b"]);
		assert_eq!(ids(index.search(&[0.0, 1.0], 5, &[])), ["c", "b", "a"]);
		assert_eq!(ids(index.search(&[0.0, 1.0], 5, &["x".into()])), ["b", "a"]);
		// Full: a fourth is refused and nothing changes; replacing one is taken.
		assert!(index.insert(vec![(record("d", "x"), vec![1.0, 0.0])]).is_err());
		assert!(index.insert(vec![(record("a", "y"), vec![1.0])]).is_err());
		assert_eq!(index.len(), 3);
		assert_eq!(index.insert(vec![(record("a", "y"), vec![0.0, -2.0])]).unwrap(), 0);
		assert_eq!(index.get("a").unwrap().datanet, "y");
		assert_eq!(ids(index.search(&[0.0, 1.0], 5, &["y".into()])), ["c", "a"]);
		// Removing the first moves the last into its place.
		assert!(index.remove("a"));
		assert!(!index.remove("a"));
		assert_eq!(index.len(), 2);
		assert_eq!(ids(index.search(&[0.0, 1.0], 5, &[])), ["c", "b"]);
		// Vectors and queries are normalized: scores are cosine similarities.
		let hits = index.search(&[3.0, 4.0], 1, &[]);
		assert_eq!(hits[0].0.id, "b");
		assert!((hits[0].1 - 1.0).abs() < 1e-6);
		index.insert(vec![(record("e", "x"), vec![0.0, 1.0])]).unwrap();
		assert_eq!(ids(index.search(&[0.0, 1.0], 2, &[])), ["c", "e"]);
	}

	#[test]
	fn records_are_checked() {
		assert!(record("a", "x").check("record 0").is_ok());
		let blank = Record { text: "  ".into(), ..record("a", "x") };
		assert!(blank.check("record 0").unwrap_err().to_string().contains("text"));
		let long = Record { id: "i".repeat(129), ..record("a", "x") };
		assert!(long.check("record 3").unwrap_err().to_string().contains("record 3: its id"));
	}
}
