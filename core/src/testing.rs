//! Test helpers: derived tolerances, assertions, seeded inputs. Being written.
