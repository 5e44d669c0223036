//! What a run costs: a table of on-demand hourly prices per instance type and region (the repository's
//! `data/prices.csv`, or the user's `--prices FILE`), the run priced on the machines it ran on, and the same
//! work priced on the original set-up (Spark + TensorFlow on EMR) at that set-up's measured throughput.
//!
//! It prices wall time only: no storage, transfer or request charges, no spot or savings-plan discounts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The repository's price table, built in.
pub const BUILT_IN_PRICES: &str = include_str!("../../data/prices.csv");

/// The original pipeline's set-up, as its project ran it: EMR 6.7, one primary and four core m5.xlarge nodes
/// in eu-west-1, which featurized 52 images/s per 2 cores.
pub mod original {
    pub const DESCRIPTION: &str = "Spark + TensorFlow on EMR 6.7: 1 primary + 4 core m5.xlarge, eu-west-1";
    pub const INSTANCE_TYPE: &str = "m5.xlarge";
    pub const REGION: &str = "eu-west-1";
    pub const PRIMARY_NODES: usize = 1;
    pub const CORE_NODES: usize = 4;
    /// Images per second the original pipeline featurized on 2 cores; the core nodes' vCPUs scale it.
    pub const IMAGES_PER_S_PER_2_CORES: f64 = 52.0;
}

/// What a run runs on, for its cost: `nodes` machines of `instance_type` in `region`, priced from `prices`
/// (the built-in table when `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostConfig {
    pub instance_type: String,
    pub region: String,
    pub nodes: usize,
    pub prices: Option<PathBuf>,
}

impl Default for CostConfig {
    /// One node of the original set-up's type and region.
    fn default() -> Self {
        CostConfig {
            instance_type: original::INSTANCE_TYPE.into(),
            region: original::REGION.into(),
            nodes: 1,
            prices: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("price table {table}: {reason}")]
pub struct PriceError {
    pub table: String,
    pub reason: String,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub instance_type: String,
    pub region: String,
    pub vcpus: u32,
    pub ec2_usd_per_hour: f64,
    pub emr_uplift_usd_per_hour: f64,
    pub as_of: String,
    pub source: String,
}

/// A price table, checked whole when loaded.
#[derive(Debug, Clone)]
pub struct PriceTable {
    /// Where it came from, for messages.
    pub name: String,
    rows: Vec<Price>,
}

impl PriceTable {
    /// The table at `file`, or the built-in one.
    pub fn load(file: Option<&Path>) -> Result<PriceTable, PriceError> {
        match file {
            None => PriceTable::parse("built-in data/prices.csv", BUILT_IN_PRICES),
            Some(file) => {
                let text = std::fs::read_to_string(file).map_err(|e| PriceError {
                    table: file.display().to_string(),
                    reason: e.to_string(),
                })?;
                PriceTable::parse(&file.display().to_string(), &text)
            }
        }
    }

    /// Parses CSV with the columns of [`Price`] (lines starting with `#` are comments); a malformed or
    /// implausible row is an error naming its line and entry.
    pub fn parse(name: &str, text: &str) -> Result<PriceTable, PriceError> {
        let failed = |reason: String| PriceError {
            table: name.to_string(),
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut rows: Vec<Price> = Vec::new();
        for record in reader.deserialize::<Price>() {
            let row = record.map_err(|e| {
                let line = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
                failed(format!("{line}{e}"))
            })?;
            let entry = format!("{} in {}", row.instance_type, row.region);
            let prices = [row.ec2_usd_per_hour, row.emr_uplift_usd_per_hour];
            if prices.iter().any(|p| !p.is_finite() || *p < 0.0) || row.ec2_usd_per_hour == 0.0 {
                return Err(failed(format!("{entry}: prices must be positive numbers")));
            }
            if row.vcpus == 0 {
                return Err(failed(format!("{entry}: vcpus must be at least 1")));
            }
            if rows
                .iter()
                .any(|r| r.instance_type == row.instance_type && r.region == row.region)
            {
                return Err(failed(format!("{entry} is listed twice")));
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(failed(
                "no prices (expected a header row and one row per instance type and region)".into(),
            ));
        }
        Ok(PriceTable {
            name: name.to_string(),
            rows,
        })
    }

    /// The price of `instance_type` in `region`, or an error naming the entry and what the table has.
    pub fn get(&self, instance_type: &str, region: &str) -> Result<&Price, PriceError> {
        self.rows
            .iter()
            .find(|r| r.instance_type == instance_type && r.region == region)
            .ok_or_else(|| {
                let mut known: Vec<String> = self
                    .rows
                    .iter()
                    .filter(|r| r.region == region)
                    .map(|r| r.instance_type.clone())
                    .collect();
                known.dedup();
                let have = match known.is_empty() {
                    true => format!("no prices in region {region}"),
                    false => format!("in {region} it has {}", known.join(", ")),
                };
                PriceError {
                    table: self.name.clone(),
                    reason: format!(
                        "no price for {instance_type} in {region} ({have}); add it, pass --prices FILE, or price \
                         another region with --price-region"
                    ),
                }
            })
    }
}

/// The prices a run or an estimate is costed with, looked up once, before any work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub table: String,
    pub node: Price,
    pub nodes: usize,
    pub original: Price,
}

impl Pricing {
    pub fn new(config: &CostConfig) -> Result<Pricing, PriceError> {
        let table = PriceTable::load(config.prices.as_deref())?;
        if config.nodes == 0 {
            return Err(PriceError {
                table: table.name.clone(),
                reason: "--nodes must be at least 1".into(),
            });
        }
        let original = table
            .get(original::INSTANCE_TYPE, original::REGION)
            .map_err(|e| PriceError {
                reason: format!(
                    "{} (the original set-up's nodes, which the saving is measured against)",
                    e.reason
                ),
                ..e
            })?;
        Ok(Pricing {
            node: table.get(&config.instance_type, &config.region)?.clone(),
            nodes: config.nodes,
            original: original.clone(),
            table: table.name,
        })
    }

    /// USD per hour of all the run's nodes (EC2 only: verger needs no EMR).
    pub fn usd_per_hour(&self) -> f64 {
        self.node.ec2_usd_per_hour * self.nodes as f64
    }

    /// The cost of `images` featurized in `wall_s`.
    pub fn cost(&self, wall_s: f64, images: u64) -> Cost {
        let usd = wall_s / 3600.0 * self.usd_per_hour();
        let original = OriginalCost::of(&self.original, images);
        let per_million = (images > 0).then(|| usd / images as f64 * 1e6);
        Cost {
            instance_type: self.node.instance_type.clone(),
            region: self.node.region.clone(),
            nodes: self.nodes,
            usd_per_node_hour: self.node.ec2_usd_per_hour,
            price_as_of: self.node.as_of.clone(),
            price_source: self.node.source.clone(),
            price_table: self.table.clone(),
            usd,
            usd_per_million_images: per_million,
            saving: match (per_million, original.usd_per_million_images) {
                (Some(ours), theirs) if ours > 0.0 => Some(theirs / ours),
                _ => None,
            },
            original,
            basis: format!(
                "wall time x {} node(s) x the EC2 on-demand price of {} in {}; storage, transfer and requests not \
                 included",
                self.nodes, self.node.instance_type, self.node.region
            ),
        }
    }
}

/// The same work on the original set-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginalCost {
    pub description: String,
    pub nodes: usize,
    /// EC2 plus EMR uplift, all nodes.
    pub usd_per_hour: f64,
    /// The original pipeline's measured rate scaled by the core nodes' vCPUs.
    pub images_per_s: f64,
    pub wall_s: f64,
    pub usd: f64,
    pub usd_per_million_images: f64,
}

impl OriginalCost {
    pub fn of(price: &Price, images: u64) -> OriginalCost {
        let nodes = original::PRIMARY_NODES + original::CORE_NODES;
        let usd_per_hour = (price.ec2_usd_per_hour + price.emr_uplift_usd_per_hour) * nodes as f64;
        let cores = (original::CORE_NODES as u32 * price.vcpus) as f64;
        let images_per_s = original::IMAGES_PER_S_PER_2_CORES * cores / 2.0;
        let wall_s = images as f64 / images_per_s;
        OriginalCost {
            description: original::DESCRIPTION.into(),
            nodes,
            usd_per_hour,
            images_per_s,
            wall_s,
            usd: wall_s / 3600.0 * usd_per_hour,
            usd_per_million_images: 1e6 / images_per_s / 3600.0 * usd_per_hour,
        }
    }
}

/// A run's cost, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub instance_type: String,
    pub region: String,
    pub nodes: usize,
    pub usd_per_node_hour: f64,
    pub price_as_of: String,
    pub price_source: String,
    pub price_table: String,
    pub usd: f64,
    /// None when nothing was featurized.
    pub usd_per_million_images: Option<f64>,
    pub original: OriginalCost,
    /// How many times cheaper per image than the original set-up.
    pub saving: Option<f64>,
    pub basis: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "instance_type,region,vcpus,ec2_usd_per_hour,emr_uplift_usd_per_hour,as_of,source\n";

    #[test]
    fn the_built_in_table_prices_the_original_set_up() {
        let pricing = Pricing::new(&CostConfig::default()).unwrap();
        assert_eq!(pricing.original.instance_type, "m5.xlarge");
        // 5 nodes x (EC2 + EMR) at 52 images/s per 2 cores x 16 core vCPUs = 416 images/s.
        let original = OriginalCost::of(&pricing.original, 416 * 3600);
        assert!((original.images_per_s - 416.0).abs() < 1e-9);
        assert!((original.wall_s - 3600.0).abs() < 1e-9);
        let hourly = 5.0 * (pricing.original.ec2_usd_per_hour + pricing.original.emr_uplift_usd_per_hour);
        assert!((original.usd - hourly).abs() < 1e-9);
        assert!((original.usd_per_million_images - hourly * 1e6 / 416.0 / 3600.0).abs() < 1e-9);
    }

    #[test]
    fn a_run_is_priced_by_wall_time_nodes_and_images() {
        let pricing = Pricing::new(&CostConfig {
            nodes: 3,
            ..CostConfig::default()
        })
        .unwrap();
        let cost = pricing.cost(1800.0, 500_000);
        assert!((cost.usd - 0.5 * 3.0 * pricing.node.ec2_usd_per_hour).abs() < 1e-12);
        assert!((cost.usd_per_million_images.unwrap() - 2.0 * cost.usd).abs() < 1e-12);
        let saving = cost.original.usd_per_million_images / cost.usd_per_million_images.unwrap();
        assert!((cost.saving.unwrap() - saving).abs() < 1e-12);
        let nothing = pricing.cost(10.0, 0);
        assert_eq!((nothing.usd_per_million_images, nothing.saving), (None, None));
    }

    #[test]
    fn a_missing_type_names_the_entry_and_what_the_table_has() {
        let table = PriceTable::load(None).unwrap();
        let e = table.get("m9.huge", "eu-west-1").unwrap_err().to_string();
        assert!(e.contains("no price for m9.huge in eu-west-1"), "{e}");
        assert!(e.contains("m5.xlarge"), "{e}");
        let e = table.get("m5.xlarge", "mars-1").unwrap_err().to_string();
        assert!(e.contains("no prices in region mars-1"), "{e}");
    }

    #[test]
    fn malformed_tables_are_refused_with_the_entry() {
        let text = format!("{HEADER}m5.xlarge,eu-west-1,4,cheap,0.048,2024-06,x\n");
        let e = PriceTable::parse("t.csv", &text).unwrap_err().to_string();
        assert!(e.starts_with("price table t.csv: line 2"), "{e}");
        assert!(e.contains("ec2_usd_per_hour") || e.contains("float"), "{e}");
        let text = format!("{HEADER}m5.xlarge,eu-west-1,4,-1,0.048,2024-06,x\n");
        let e = PriceTable::parse("t.csv", &text).unwrap_err().to_string();
        assert!(e.contains("m5.xlarge in eu-west-1: prices must be positive"), "{e}");
        let text =
            format!("{HEADER}m5.xlarge,eu-west-1,4,0.2,0.048,2024-06,x\nm5.xlarge,eu-west-1,4,0.2,0.048,2024-06,x\n");
        let e = PriceTable::parse("t.csv", &text).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let text = format!("{HEADER}m5.xlarge,eu-west-1,4\n");
        assert!(PriceTable::parse("t.csv", &text).is_err());
        assert!(PriceTable::parse("t.csv", HEADER)
            .unwrap_err()
            .to_string()
            .contains("no prices"));
    }

    #[test]
    fn a_table_without_the_original_nodes_is_refused_for_the_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prices.csv");
        std::fs::write(&file, format!("{HEADER}c5.xlarge,eu-west-1,4,0.192,0.048,2024-06,x\n")).unwrap();
        let config = CostConfig {
            instance_type: "c5.xlarge".into(),
            prices: Some(file),
            ..CostConfig::default()
        };
        let e = Pricing::new(&config).unwrap_err().to_string();
        assert!(e.contains("no price for m5.xlarge in eu-west-1"), "{e}");
        assert!(e.contains("original set-up"), "{e}");
    }
}
