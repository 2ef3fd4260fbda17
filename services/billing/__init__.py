"""The Billing service: plans, price book, subscriptions and invoices."""
