"""The oracle: true probabilities from a synthetic world's truth tables, aligned with test rows.

Only synthetic worlds have a `truth/` folder; everywhere else the oracle is simply absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from features.ingest.contract import CUSTOMER_ID, EVENT_ID, DataDir


@dataclass
class Truth:
    contacts: pd.DataFrame  # indexed by event_id
    customers: pd.DataFrame  # indexed by person_id
    person_of_customer: pd.Series  # customer_id -> person_id


def load_truth(data_dir: DataDir, con: duckdb.DuckDBPyConnection) -> Truth | None:
    """The world's truth, or None when the data directory has none (real data)."""
    root = data_dir.truth
    if not (root / "contacts").exists() or not (root / "identity").exists():
        return None
    contacts = con.sql(
        f"SELECT event_id, p_response, p_purchase_treated, p_purchase_control "
        f"FROM read_parquet('{root / 'contacts'}/*.parquet')"
    ).df()
    customers = con.sql(f"SELECT * FROM read_parquet('{root / 'customers'}/*.parquet')").df()
    person = persons_of_customers(con, data_dir)
    return Truth(
        contacts=contacts.set_index(EVENT_ID),
        customers=customers.set_index("person_id"),
        person_of_customer=person.set_index(CUSTOMER_ID)["person_id"],
    )


def persons_of_customers(con: duckdb.DuckDBPyConnection, data_dir: DataDir) -> pd.DataFrame:
    """customer_id -> person_id: the person most of the customer's identifiers belong to, a tie
    going to the smallest person_id (DuckDB's mode() breaks ties differently from run to run)."""
    return con.sql(
        f"""SELECT i.{CUSTOMER_ID}, t.person_id
            FROM identity i JOIN read_parquet('{data_dir.truth / "identity"}/*.parquet') t
              ON t.identifier = i.identifier
            GROUP BY i.{CUSTOMER_ID}, t.person_id
            QUALIFY row_number() OVER (PARTITION BY i.{CUSTOMER_ID}
                                       ORDER BY count(*) DESC, t.person_id) = 1"""
    ).df()


def uplift_types(truth: Truth, customer_ids: pd.Series) -> np.ndarray | None:
    """Each row's true uplift type (persuadable, sure thing, ...), if the world has them."""
    if "uplift_type" not in truth.customers.columns:
        return None
    persons = truth.person_of_customer.reindex(customer_ids.to_numpy()).to_numpy()
    return truth.customers["uplift_type"].reindex(persons).to_numpy()


def contact_oracle(truth: Truth, event_ids: pd.Series) -> pd.DataFrame:
    """True p_response, p_purchase_treated, p_purchase_control and uplift per contact row."""
    out = truth.contacts.reindex(event_ids.to_numpy())
    out["uplift"] = out["p_purchase_treated"] - out["p_purchase_control"]
    out.index = event_ids.index
    return out


def purchase_oracle(
    truth: Truth, customer_ids: pd.Series, as_of: pd.Timestamp, horizon_days: float
) -> np.ndarray:
    """True probability of at least one purchase in (as_of, as_of + horizon] without contact.

    NaN for customers that are not a known person (see `load_truth`).
    """
    from features.synthetic.purchases import true_purchase_probability

    people = truth.customers
    p = pd.Series(
        np.asarray(true_purchase_probability(people.reset_index(), as_of, horizon_days)),
        index=people.index,
    )
    persons = truth.person_of_customer.reindex(customer_ids.to_numpy())
    return p.reindex(persons.to_numpy()).to_numpy(dtype=float)
