// Rill dashboard: a small single-page app over the JobManager's REST API.
// Plain JavaScript with no dependencies, so it is served straight from the
// JobManager binary. Each page is a function that fetches what it shows and
// renders it; the current page is re-rendered every refresh interval.
(function () {
  "use strict";

  var PALETTE = ["#2f6fde", "#1f9d55", "#d9822b", "#9b51e0", "#d64545",
    "#0fa3b1", "#8a6d3b", "#e05297", "#5c6bc0", "#7cb342"];
  var SVG_NS = "http://www.w3.org/2000/svg";

  var refreshMs = 3000;
  var timer = null;
  var renderSeq = 0;

  // ------------------------------------------------------------------ utils

  function esc(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function api(path, options) {
    return fetch(path, options).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!response.ok) {
          var message = body && body.errors ? body.errors.join("; ") : response.statusText;
          throw new Error(path + ": " + response.status + " " + message);
        }
        return body;
      });
    });
  }

  function fmtTime(ms) {
    if (!ms || ms < 0) { return "–"; }
    var d = new Date(ms);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || ms < 0) { return "–"; }
    var s = Math.floor(ms / 1000);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (h > 0) { return h + "h " + m + "m " + sec + "s"; }
    if (m > 0) { return m + "m " + sec + "s"; }
    if (ms < 1000) { return ms + "ms"; }
    return sec + "s";
  }

  function fmtNum(n) {
    if (n === null || n === undefined) { return "–"; }
    var abs = Math.abs(n);
    if (abs >= 1e9) { return (n / 1e9).toFixed(2) + "G"; }
    if (abs >= 1e6) { return (n / 1e6).toFixed(2) + "M"; }
    if (abs >= 1e4) { return (n / 1e3).toFixed(1) + "k"; }
    if (abs < 10 && abs !== Math.floor(abs)) { return n.toFixed(2); }
    return String(Math.round(n));
  }

  function fmtBytes(n) {
    if (!n) { return "0 B"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function badge(state) {
    return '<span class="badge ' + esc(state) + '">' + esc(state) + "</span>";
  }

  function showError(message) {
    var box = document.getElementById("error");
    if (message) { box.textContent = message; box.hidden = false; } else { box.hidden = true; }
  }

  function main() { return document.getElementById("main"); }

  function svgEl(name, attrs, text) {
    var el = document.createElementNS(SVG_NS, name);
    Object.keys(attrs || {}).forEach(function (key) { el.setAttribute(key, attrs[key]); });
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  function truncate(text, max) {
    text = String(text);
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  // ----------------------------------------------------------------- tables

  function jobsTable(jobs) {
    if (!jobs.length) { return '<p class="muted">No jobs.</p>'; }
    var rows = jobs.map(function (job) {
      return "<tr><td><a href=\"#/jobs/" + esc(job.jid) + "\">" + esc(job.name) + "</a></td>" +
        "<td><code>" + esc(job.jid) + "</code></td>" +
        "<td>" + badge(job.state) + "</td>" +
        "<td>" + esc(fmtTime(job["start-time"])) + "</td>" +
        "<td>" + esc(fmtDuration(job.duration)) + "</td>" +
        '<td class="num">' + esc(job.tasks) + "</td></tr>";
    }).join("");
    return '<table class="jobs"><thead><tr><th>Job</th><th>Id</th><th>Status</th><th>Start</th>' +
      '<th>Duration</th><th class="num">Subtasks</th></tr></thead><tbody>' + rows + "</tbody></table>";
  }

  function taskmanagersTable(tms) {
    if (!tms.length) { return '<p class="muted">No TaskManagers registered.</p>'; }
    var rows = tms.map(function (tm) {
      return '<tr class="taskmanager"><td><code>' + esc(tm.id) + "</code></td>" +
        "<td>" + esc(tm.path) + "</td>" +
        '<td class="num">' + esc(tm.dataPort) + "</td>" +
        '<td class="num">' + esc(tm.slotsNumber) + "</td>" +
        '<td class="num">' + esc(tm.freeSlots) + "</td>" +
        '<td class="num">' + esc(fmtDuration(tm.timeSinceLastHeartbeat)) + "</td></tr>";
    }).join("");
    return "<table><thead><tr><th>Id</th><th>Address</th><th class=\"num\">Data port</th>" +
      '<th class="num">Slots</th><th class="num">Free</th><th class="num">Last heartbeat</th>' +
      "</tr></thead><tbody>" + rows + "</tbody></table>";
  }

  function card(label, value) {
    return '<div class="card"><div class="label">' + esc(label) + '</div><div class="value">' +
      esc(value) + "</div></div>";
  }

  // ------------------------------------------------------------------ pages

  function overviewPage() {
    return Promise.all([api("overview"), api("jobs/overview"), api("taskmanagers")])
      .then(function (r) {
        var ov = r[0], jobs = r[1].jobs, tms = r[2].taskmanagers;
        var running = jobs.filter(function (j) { return !isTerminal(j.state); });
        var done = jobs.filter(function (j) { return isTerminal(j.state); });
        return "<h1>Cluster overview</h1>" +
          '<div class="cards">' +
          card("Task Managers", ov.taskmanagers) +
          card("Slots total", ov["slots-total"]) +
          card("Slots available", ov["slots-available"]) +
          card("Jobs running", ov["jobs-running"]) +
          card("Jobs finished", ov["jobs-finished"]) +
          card("Jobs cancelled", ov["jobs-cancelled"]) +
          card("Jobs failed", ov["jobs-failed"]) +
          "</div>" +
          '<div class="panel"><h2>Running jobs</h2>' + jobsTable(running) + "</div>" +
          '<div class="panel"><h2>Completed jobs</h2>' + jobsTable(done) + "</div>" +
          '<div class="panel"><h2>Task Managers</h2>' + taskmanagersTable(tms) + "</div>";
      });
  }

  function jobsPage() {
    return api("jobs/overview").then(function (r) {
      return "<h1>Jobs</h1><div class=\"panel\">" + jobsTable(r.jobs) + "</div>";
    });
  }

  function taskmanagersPage() {
    return api("taskmanagers").then(function (r) {
      return "<h1>Task Managers</h1><div class=\"panel\">" + taskmanagersTable(r.taskmanagers) + "</div>";
    });
  }

  function jobmanagerPage() {
    return api("jobmanager/config").then(function (entries) {
      var rows = entries.map(function (e) {
        return "<tr><td><code>" + esc(e.key) + "</code></td><td><code>" + esc(e.value) + "</code></td></tr>";
      }).join("");
      return "<h1>Job Manager configuration</h1><div class=\"panel\"><table><thead><tr><th>Key</th>" +
        "<th>Value</th></tr></thead><tbody>" + rows + "</tbody></table></div>";
    });
  }

  function isTerminal(state) {
    return state === "FINISHED" || state === "FAILED" || state === "CANCELED";
  }

  function jobPage(id) {
    var base = "jobs/" + encodeURIComponent(id);
    return Promise.all([
      api(base),
      api(base + "/checkpoints").catch(function () { return null; }),
      api(base + "/history").catch(function () { return null; })
    ]).then(function (r) {
      var job = r[0], checkpoints = r[1], history = r[2];
      var html = '<div class="jobhead"><h1 id="job-name">' + esc(job.name) + "</h1>" + badge(job.state) +
        '<span class="meta"><code>' + esc(job.jid) + "</code> · entry <code>" + esc(job.entry) +
        "</code> · started " + esc(fmtTime(job["start-time"])) + " · " + esc(fmtDuration(job.duration)) +
        " · parallelism " + esc(job.parallelism) + " · restarts " + esc(job.restarts) + "</span>";
      if (!isTerminal(job.state)) {
        html += '<span class="actions"><button id="savepoint-btn">Trigger savepoint</button>' +
          '<button id="cancel-btn" class="danger">Cancel job</button></span>';
      }
      html += "</div>";
      if (job.failure) {
        html += '<div class="panel"><h2>Failure</h2><div class="failure">' + esc(job.failure) + "</div></div>";
      }
      html += '<div class="panel"><h2>Job graph</h2><div id="graph-holder"></div></div>';
      html += '<div class="panel"><h2>Vertices</h2>' + verticesTable(job.vertices) + "</div>";
      html += '<div class="grid2">' +
        '<div class="panel"><h2>Records in per second</h2><div id="chart-in-holder"></div></div>' +
        '<div class="panel"><h2>Records out per second</h2><div id="chart-out-holder"></div></div>' +
        '<div class="panel"><h2>Backpressure (max over subtasks)</h2><div id="chart-bp-holder"></div></div>' +
        "</div>";
      html += '<div class="panel"><h2>Checkpoints</h2>' + checkpointsSection(checkpoints) + "</div>";
      return {
        html: html,
        after: function () {
          document.getElementById("graph-holder").appendChild(drawGraph(job.vertices));
          drawCharts(job.vertices, history);
          wireActions(job);
        }
      };
    });
  }

  function verticesTable(vertices) {
    var rows = vertices.map(function (v) {
      var m = v.metrics || {};
      return "<tr><td>" + esc(v.name) + '</td><td class="num">' + esc(v.parallelism) + "</td>" +
        '<td class="num">' + esc(v["max-parallelism"]) + "</td>" +
        '<td class="num">' + esc(fmtNum(m["read-records"])) + "</td>" +
        '<td class="num">' + esc(fmtNum(m["write-records"])) + "</td>" +
        '<td class="num">' + esc(((m.backpressure || 0) * 100).toFixed(0)) + "%</td>" +
        "<td>" + esc(m.watermark === null || m.watermark === undefined ? "–" : fmtTime(m.watermark)) + "</td></tr>";
    }).join("");
    return "<table><thead><tr><th>Vertex</th><th class=\"num\">Parallelism</th><th class=\"num\">Max</th>" +
      '<th class="num">Records in</th><th class="num">Records out</th><th class="num">Backpressure</th>' +
      "<th>Watermark</th></tr></thead><tbody>" + rows + "</tbody></table>";
  }

  function checkpointsSection(cp) {
    if (!cp) { return '<p class="muted">No checkpoint statistics.</p>'; }
    var c = cp.counts || {};
    var html = '<div class="cards">' + card("Completed", c.completed) + card("Failed", c.failed) +
      card("In progress", c.in_progress) + card("Restored", c.restored) + "</div>";
    var restored = cp.latest && cp.latest.restored;
    if (restored) {
      html += '<p class="muted">Restored from ' + (restored.is_savepoint ? "savepoint" : "checkpoint") + " " +
        esc(restored.id) + " at <code>" + esc(restored.external_path) + "</code></p>";
    }
    if (!cp.history || !cp.history.length) { return html + '<p class="muted">No checkpoints yet.</p>'; }
    var rows = cp.history.map(function (h) {
      return '<tr class="checkpoint"><td class="num">' + esc(h.id) + "</td><td>" + badge(h.status) +
        "</td><td>" + (h.is_savepoint ? "savepoint" : "checkpoint") + "</td>" +
        "<td>" + esc(fmtTime(h.trigger_timestamp)) + "</td>" +
        "<td>" + esc(fmtTime(h.latest_ack_timestamp)) + "</td>" +
        '<td class="num">' + esc(fmtDuration(h.end_to_end_duration)) + "</td>" +
        '<td class="num">' + esc(fmtBytes(h.state_size)) + "</td>" +
        "<td><code>" + esc(h.external_path || h.failure_message || "") + "</code></td></tr>";
    }).join("");
    return html + '<table id="checkpoint-table"><thead><tr><th class="num">Id</th><th>Status</th><th>Type</th>' +
      "<th>Triggered</th><th>Acknowledged</th><th class=\"num\">Duration</th><th class=\"num\">Size</th>" +
      "<th>Path / failure</th></tr></thead><tbody>" + rows + "</tbody></table>";
  }

  function wireActions(job) {
    var cancelBtn = document.getElementById("cancel-btn");
    var savepointBtn = document.getElementById("savepoint-btn");
    var base = "jobs/" + encodeURIComponent(job.jid);
    if (cancelBtn) {
      cancelBtn.onclick = function () {
        if (!window.confirm("Cancel job " + job.name + "?")) { return; }
        cancelBtn.disabled = true;
        api(base + "?mode=cancel", { method: "PATCH" }).then(refresh, function (e) { showError(e.message); });
      };
    }
    if (savepointBtn) {
      savepointBtn.onclick = function () {
        savepointBtn.disabled = true;
        api(base + "/savepoints", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ "cancel-job": false })
        }).then(function (r) {
          savepointBtn.textContent = "Savepoint requested (" + r["request-id"] + ")";
        }, function (e) { showError(e.message); savepointBtn.disabled = false; });
      };
    }
  }

  // ------------------------------------------------------------------ graph

  // Lays vertices out in columns by their longest distance from a source,
  // then draws them as boxes joined by edges labelled with the partitioning.
  function drawGraph(vertices) {
    var byId = {};
    vertices.forEach(function (v) { byId[v.id] = v; });
    var level = {};
    function levelOf(v, depth) {
      if (level[v.id] !== undefined) { return level[v.id]; }
      if (depth > vertices.length) { return 0; }
      var l = 0;
      (v.inputs || []).forEach(function (input) {
        var src = byId[input.id];
        if (src) { l = Math.max(l, levelOf(src, depth + 1) + 1); }
      });
      level[v.id] = l;
      return l;
    }
    vertices.forEach(function (v) { levelOf(v, 0); });
    var columns = [];
    vertices.forEach(function (v) {
      var l = level[v.id];
      (columns[l] = columns[l] || []).push(v);
    });
    var W = 210, H = 66, GAPX = 90, GAPY = 34, PAD = 20;
    var rowsMax = Math.max.apply(null, columns.map(function (c) { return c ? c.length : 0; }).concat([1]));
    var width = PAD * 2 + columns.length * W + Math.max(0, columns.length - 1) * GAPX;
    var height = PAD * 2 + rowsMax * H + (rowsMax - 1) * GAPY;
    var pos = {};
    columns.forEach(function (col, ci) {
      if (!col) { return; }
      var offset = (height - (col.length * H + (col.length - 1) * GAPY)) / 2;
      col.forEach(function (v, ri) {
        pos[v.id] = { x: PAD + ci * (W + GAPX), y: offset + ri * (H + GAPY) };
      });
    });

    var svg = svgEl("svg", {
      id: "job-graph", "class": "graph", width: Math.max(width, 300), height: height,
      viewBox: "0 0 " + Math.max(width, 300) + " " + height
    });
    var defs = svgEl("defs");
    var marker = svgEl("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto"
    });
    marker.appendChild(svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a97a8" }));
    defs.appendChild(marker);
    svg.appendChild(defs);

    vertices.forEach(function (v) {
      (v.inputs || []).forEach(function (input) {
        var a = pos[input.id], b = pos[v.id];
        if (!a || !b) { return; }
        var x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
        svg.appendChild(svgEl("path", {
          "class": "edge", d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2,
          "marker-end": "url(#arrow)"
        }));
        svg.appendChild(svgEl("text", {
          "class": "edge-label", x: mx, y: (y1 + y2) / 2 - 6, "text-anchor": "middle"
        }, input["ship-strategy"]));
      });
    });

    vertices.forEach(function (v) {
      var p = pos[v.id];
      var bp = (v.metrics && v.metrics.backpressure) || 0;
      var g = svgEl("g", {
        "class": "vertex" + (bp >= 0.5 ? " bp-high" : bp >= 0.1 ? " bp-mid" : ""),
        "data-vertex-id": v.id, transform: "translate(" + p.x + "," + p.y + ")"
      });
      g.appendChild(svgEl("rect", { width: W, height: H, rx: 6, ry: 6 }));
      g.appendChild(svgEl("title", {}, v.name));
      g.appendChild(svgEl("text", { "class": "name", x: 10, y: 22 }, truncate(v.name, 28)));
      g.appendChild(svgEl("text", { "class": "detail", x: 10, y: 40 }, "Parallelism: " + v.parallelism));
      g.appendChild(svgEl("text", { "class": "detail", x: 10, y: 56 },
        "Backpressure: " + Math.round(bp * 100) + "%"));
      svg.appendChild(g);
    });
    return svg;
  }

  // ----------------------------------------------------------------- charts

  function drawCharts(vertices, history) {
    var samples = (history && history.samples) || [];
    var names = {};
    vertices.forEach(function (v) { names[v.id] = v.name; });
    var series = function (field) {
      return vertices.map(function (v, i) {
        return {
          name: v.name,
          color: PALETTE[i % PALETTE.length],
          points: samples.map(function (s) {
            var vp = null;
            for (var k = 0; k < s.vertices.length; k++) {
              if (s.vertices[k].id === v.id) { vp = s.vertices[k]; break; }
            }
            var value = vp ? vp[field] : null;
            return value === null || value === undefined ? null : [s.timestamp, value];
          }).filter(function (p) { return p !== null; })
        };
      });
    };
    place("chart-in-holder", lineChart("chart-in", series("read-records-per-second"), fmtNum, null));
    place("chart-out-holder", lineChart("chart-out", series("write-records-per-second"), fmtNum, null));
    place("chart-bp-holder", lineChart("chart-bp", series("backpressure"), function (v) {
      return Math.round(v * 100) + "%";
    }, 1));
  }

  function place(holderId, node) {
    var holder = document.getElementById(holderId);
    holder.innerHTML = "";
    holder.appendChild(node);
  }

  function niceMax(v) {
    if (v <= 0) { return 1; }
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var m = v / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function lineChart(id, series, fmt, fixedMax) {
    var W = 560, H = 200, L = 52, R = 12, T = 12, B = 26;
    var wrap = document.createElement("div");
    var svg = svgEl("svg", { id: id, "class": "chart", viewBox: "0 0 " + W + " " + H,
      width: W, height: H, preserveAspectRatio: "none" });
    var all = [];
    series.forEach(function (s) { all = all.concat(s.points); });
    var tMin = Infinity, tMax = -Infinity, vMax = 0;
    all.forEach(function (p) {
      tMin = Math.min(tMin, p[0]); tMax = Math.max(tMax, p[0]); vMax = Math.max(vMax, p[1]);
    });
    var yMax = fixedMax || niceMax(vMax);
    if (!all.length) { tMin = 0; tMax = 1; }
    if (tMax === tMin) { tMax = tMin + 1; }
    var x = function (t) { return L + (t - tMin) / (tMax - tMin) * (W - L - R); };
    var y = function (v) { return T + (1 - Math.min(v, yMax) / yMax) * (H - T - B); };
    for (var i = 0; i <= 4; i++) {
      var v = yMax * i / 4;
      svg.appendChild(svgEl("line", { "class": "gridline", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.appendChild(svgEl("text", { "class": "tick", x: L - 6, y: y(v) + 3, "text-anchor": "end" }, fmt(v)));
    }
    svg.appendChild(svgEl("line", { "class": "axis", x1: L, x2: L, y1: T, y2: H - B }));
    svg.appendChild(svgEl("line", { "class": "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    if (all.length) {
      var span = Math.round((tMax - tMin) / 1000);
      svg.appendChild(svgEl("text", { "class": "tick", x: L, y: H - 8 }, "-" + span + "s"));
      svg.appendChild(svgEl("text", { "class": "tick", x: W - R, y: H - 8, "text-anchor": "end" }, "now"));
    } else {
      svg.appendChild(svgEl("text", { "class": "tick", x: W / 2, y: H / 2, "text-anchor": "middle" },
        "No samples yet"));
    }
    series.forEach(function (s) {
      if (!s.points.length) { return; }
      var pts = s.points.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); });
      if (s.points.length === 1) { pts.push((W - R) + "," + y(s.points[0][1]).toFixed(1)); }
      var line = svgEl("polyline", { "class": "series", points: pts.join(" "), stroke: s.color });
      line.appendChild(svgEl("title", {}, s.name));
      svg.appendChild(line);
    });
    wrap.appendChild(svg);
    var legend = document.createElement("div");
    legend.className = "legend";
    legend.innerHTML = series.map(function (s) {
      return '<span><span class="swatch" style="background:' + esc(s.color) + '"></span>' + esc(s.name) + "</span>";
    }).join("");
    wrap.appendChild(legend);
    return wrap;
  }

  // ----------------------------------------------------------------- router

  function route() {
    var hash = window.location.hash.replace(/^#\/?/, "");
    var parts = hash.split("/").filter(function (p) { return p.length; }).map(decodeURIComponent);
    if (parts[0] === "jobs" && parts[1]) { return { nav: "jobs", render: function () { return jobPage(parts[1]); } }; }
    if (parts[0] === "jobs") { return { nav: "jobs", render: jobsPage }; }
    if (parts[0] === "taskmanagers") { return { nav: "taskmanagers", render: taskmanagersPage }; }
    if (parts[0] === "jobmanager") { return { nav: "jobmanager", render: jobmanagerPage }; }
    return { nav: "overview", render: overviewPage };
  }

  function refresh() {
    if (timer) { clearTimeout(timer); timer = null; }
    var seq = ++renderSeq;
    var current = route();
    Array.prototype.forEach.call(document.querySelectorAll("[data-nav]"), function (a) {
      a.classList.toggle("active", a.getAttribute("data-nav") === current.nav);
    });
    current.render().then(function (page) {
      if (seq !== renderSeq) { return; }
      var html = typeof page === "string" ? page : page.html;
      main().innerHTML = html;
      if (page.after) { page.after(); }
      showError(null);
    }).catch(function (e) {
      if (seq !== renderSeq) { return; }
      showError(e.message);
    }).then(function () {
      if (seq === renderSeq) { timer = setTimeout(refresh, refreshMs); }
    });
  }

  window.addEventListener("hashchange", refresh);
  api("config").then(function (config) {
    if (config["refresh-interval"] > 0) { refreshMs = config["refresh-interval"]; }
    document.getElementById("version").textContent = config["flink-revision"];
  }).catch(function () { /* keep the default interval */ }).then(refresh);
})();
