DROP TRIGGER metrics_tables_keep_referenced ON metrics_tables;
DROP FUNCTION metrics_tables_keep_referenced();
ALTER TABLE sessions
    ADD CONSTRAINT sessions_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id);
ALTER TABLE runs
    ADD CONSTRAINT runs_table_id_fkey FOREIGN KEY (table_id) REFERENCES metrics_tables (id);
