#!/usr/bin/env python3
"""The web console in headless Chromium (Debian's chromium + chromium-driver, Selenium).

Usage: console_browser.py HTTP_BASE SCREENSHOT_DIR
Loads the console, runs a query, sees its rows and a time-series chart, opens the table
list and the live page (which must refresh by itself), checks the browser logged no
errors, and saves screenshots. Run by tests/e2e/console.rs.
"""
import pathlib
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, shots = sys.argv[1].rstrip("/"), pathlib.Path(sys.argv[2])
shots.mkdir(parents=True, exist_ok=True)
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run",
          "--window-size=1400,1000", f"--user-data-dir={tempfile.mkdtemp()}"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 20)


def check(name, cond, detail=""):
    if not cond:
        driver.save_screenshot(str(shots / "failure.png"))
        print(f"FAILED {name}: {detail}", flush=True)
        driver.quit()
        sys.exit(1)
    print(f"ok {name}", flush=True)


try:
    driver.get(base + "/")
    editor = wait.until(EC.presence_of_element_located((By.ID, "sql")))
    check("console loads", driver.title == "Basalt console", driver.title)
    editor.clear()
    editor.send_keys(
        "SELECT DATE_TRUNC('second', ts) AS second, count(*) AS events, avg(latency_ms) AS latency\n"
        "FROM events GROUP BY 1 ORDER BY 1")
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result tbody tr"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#result tbody tr")
    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#result th")]
    check("query rows shown", len(rows) > 1 and headers == ["second", "events", "latency"], headers)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart canvas"))
    kind = driver.find_element(By.ID, "chart").get_attribute("data-kind")
    check("time-series chart drawn", kind == "timeseries", kind)
    check("status names rows and time", "rows" in driver.find_element(By.ID, "status").text)
    driver.save_screenshot(str(shots / "console-query.png"))

    editor.clear()
    editor.send_keys("SELECT event_type, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC")
    editor.send_keys(webdriver.Keys.CONTROL, webdriver.Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "chart").get_attribute("data-kind") == "bars")
    check("bar chart for a categorical result", True)

    editor.clear()
    editor.send_keys("SELECT nope FROM events")
    driver.find_element(By.ID, "run").click()
    err = wait.until(EC.visibility_of_element_located((By.ID, "error")))
    check("SQL error shown", "nope" in err.text, err.text)

    driver.get(base + "/#tables")
    wait.until(lambda d: "events" in d.find_element(By.ID, "tables").text)
    text = driver.find_element(By.ID, "tables").text
    check("table list with schema", "latency_ms" in text and "DOUBLE" in text and "rows" in text, text[:300])
    check("ingestion status shown", "real-time" in text and "batch" in text, text[:600])

    driver.get(base + "/#live")
    wait.until(lambda d: d.find_element(By.ID, "live-count").text not in ("", "–"))
    first = driver.find_element(By.ID, "live-status").text
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#live-chart canvas"))
    time.sleep(2.5)
    second = driver.find_element(By.ID, "live-status").text
    check("live page refreshes every second", first != second and "refreshed" in second, (first, second))
    driver.save_screenshot(str(shots / "console-live.png"))

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    check("no browser errors", not errors, errors)
finally:
    driver.quit()
print("console checks passed", flush=True)
