"""Dunning (催费): bills, payments, the reminder ladder behind a compliance gate, 违约金, instalments,
cut-off proposals and refund statements. Status is per household and per heat-fee ledger only (R37)."""
