// pgjdbc (Debian's libpostgresql-jdbc-java, the driver under DBeaver, Metabase and most JVM
// tools) against a live Basalt: DatabaseMetaData, prepared statements with each parameter
// type, timestamps and arrays both ways, and setFetchSize (cursor portals).
//
// Usage: java -cp /usr/share/java/postgresql.jar tests/clients/PgJdbc.java HOST PORT
// Expects the `events` table loaded (the quickstart's generator schema). Exits non-zero with
// the failing check named on the first failure. Run by tests/e2e/postgres.rs.

import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

public class PgJdbc {
    static int checks = 0;

    static void check(String name, boolean ok, Object detail) {
        checks++;
        if (!ok) {
            System.out.println("FAILED " + name + ": " + detail);
            System.exit(1);
        }
        System.out.println("ok " + name);
    }

    static long one(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/analytics";
        try (Connection c = DriverManager.getConnection(url, "basalt", "")) {
            DatabaseMetaData md = c.getMetaData();
            check("product name", md.getDatabaseProductName().equals("PostgreSQL"),
                md.getDatabaseProductName());

            // --- DatabaseMetaData: what a tool's schema browser asks for -----------------
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            check("getTables lists events", tables.contains("events"), tables);
            Map<String, String> cols = new HashMap<>();
            Map<String, Integer> jdbcTypes = new HashMap<>();
            try (ResultSet rs = md.getColumns(null, "public", "events", "%")) {
                while (rs.next()) {
                    cols.put(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"));
                    jdbcTypes.put(rs.getString("COLUMN_NAME"), rs.getInt("DATA_TYPE"));
                }
            }
            check("getColumns types", cols.size() == 13
                && "float8".equals(cols.get("latency_ms")) && "timestamp".equals(cols.get("ts"))
                && "text".equals(cols.get("country")) && "bool".equals(cols.get("is_bot")), cols);
            check("getColumns JDBC types", jdbcTypes.get("latency_ms") == Types.DOUBLE
                && jdbcTypes.get("ts") == Types.TIMESTAMP && jdbcTypes.get("is_bot") == Types.BIT,
                jdbcTypes);
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
            }
            check("getSchemas", schemas.contains("public") && schemas.contains("pg_catalog"),
                schemas);
            List<String> types = new ArrayList<>();
            try (ResultSet rs = md.getTypeInfo()) {
                while (rs.next()) types.add(rs.getString("TYPE_NAME"));
            }
            check("getTypeInfo", types.contains("int8") && types.contains("text")
                && types.contains("timestamptz") && types.contains("_text"), types);
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "events")) {
                check("getPrimaryKeys (none)", !rs.next(), "a key");
            }
            try (ResultSet rs = md.getIndexInfo(null, "public", "events", false, true)) {
                while (rs.next()) { }
                check("getIndexInfo", true, "");
            }

            long total;
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT count(*) FROM events")) {
                rs.next();
                total = rs.getLong(1);
            }
            check("count", total > 0, total);
            String top;
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(
                     "SELECT country FROM events GROUP BY country ORDER BY count(*) DESC LIMIT 1")) {
                rs.next();
                top = rs.getString(1);
            }

            // --- Prepared statements, one per parameter type -----------------------------
            try (PreparedStatement ps =
                     c.prepareStatement("SELECT count(*) FROM events WHERE country = ?")) {
                ps.setString(1, top);
                long n = one(ps);
                check("setString", n > 0 && n < total, n);
                // Prepared statements are re-executed (server-side after 5 runs).
                for (int i = 0; i < 6; i++) {
                    check("re-executed prepared statement " + i, one(ps) == n, n);
                }
            }
            try (PreparedStatement ps =
                     c.prepareStatement("SELECT count(*) FROM events WHERE latency_ms > ?")) {
                ps.setDouble(1, 100.0);
                long d = one(ps);
                ps.setFloat(1, 100.0f);
                long f = one(ps);
                ps.setInt(1, 100);
                long i = one(ps);
                ps.setLong(1, 100L);
                long l = one(ps);
                ps.setShort(1, (short) 100);
                long sh = one(ps);
                ps.setBigDecimal(1, new BigDecimal("100.0"));
                long bd = one(ps);
                ps.setObject(1, 100.0);
                long o = one(ps);
                check("setDouble/setFloat/setInt/setLong/setShort/setBigDecimal/setObject agree",
                    d > 0 && d < total && d == f && d == i && d == l && d == sh && d == bd
                        && d == o, List.of(d, f, i, l, sh, bd, o));
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "SELECT count(*) FROM events WHERE is_bot = ? AND revenue >= ?")) {
                ps.setBoolean(1, false);
                ps.setBigDecimal(2, new BigDecimal("0"));
                long n = one(ps);
                check("setBoolean + setBigDecimal", n > 0 && n <= total, n);
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "SELECT count(*) FROM events WHERE ts >= ? AND CAST(ts AS DATE) <= ?")) {
                ps.setTimestamp(1, Timestamp.valueOf("2000-01-01 00:00:00"));
                ps.setDate(2, Date.valueOf("2100-01-01"));
                check("setTimestamp + setDate", one(ps) == total, total);
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "SELECT count(*) FROM events WHERE country = ? OR ? IS NULL")) {
                ps.setNull(1, Types.VARCHAR);
                ps.setNull(2, Types.VARCHAR);
                check("setNull", one(ps) == total, total);
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "SELECT device, count(*) AS n FROM events GROUP BY device ORDER BY n DESC LIMIT ?")) {
                ps.setInt(1, 2);
                int rows = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) rows++;
                }
                check("LIMIT ?", rows == 2, rows);
            }

            // --- Timestamps and arrays -----------------------------------------------------
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(
                     "SELECT max(ts) AS t, CAST(max(ts) AS DATE) AS d FROM events")) {
                rs.next();
                Timestamp t = rs.getTimestamp("t");
                Date d = rs.getDate("d");
                check("getTimestamp/getDate", t != null && d != null
                    && t.toLocalDateTime().toLocalDate().equals(d.toLocalDate()), t + " " + d);
            }
            try (PreparedStatement ps = c.prepareStatement(
                     "SELECT count(*) FROM events WHERE device = ANY(?)")) {
                Array devices = c.createArrayOf("text", new String[] {"mobile", "tablet"});
                ps.setArray(1, devices);
                long both = one(ps);
                ps.setArray(1, c.createArrayOf("text", new String[] {"mobile"}));
                long mobile = one(ps);
                check("setArray (text[])", both > mobile && mobile > 0, both + " " + mobile);
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(
                     "SELECT array_agg(DISTINCT device ORDER BY device) AS devices FROM events")) {
                rs.next();
                String[] devices = (String[]) rs.getArray("devices").getArray();
                check("getArray", devices.length >= 3 && devices[0].compareTo(devices[1]) < 0,
                    String.join(",", devices));
            }

            // --- setFetchSize: a cursor portal fetched in pages -----------------------------
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement(
                     "SELECT event_id, ts FROM events ORDER BY ts, event_id")) {
                ps.setFetchSize(1000);
                long rows = 0;
                Timestamp last = null;
                boolean ordered = true;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        Timestamp t = rs.getTimestamp(2);
                        if (last != null && t.before(last)) ordered = false;
                        last = t;
                        rows++;
                    }
                }
                check("setFetchSize pages every row in order", rows == total && ordered, rows);
            }
            c.commit();
            c.setAutoCommit(true);

            // --- Errors carry SQLSTATEs -------------------------------------------------------
            try (Statement s = c.createStatement()) {
                s.executeQuery("SELECT nope FROM events");
                check("undefined column", false, "no error");
            } catch (SQLException e) {
                check("undefined column 42703", "42703".equals(e.getSQLState()), e.getSQLState());
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 1")) {
                rs.next();
                check("connection usable after an error", rs.getInt(1) == 1, "");
            }
        }
        System.out.println("all " + checks + " jdbc checks passed");
    }
}
