// multistep dashboard: live progress (server-sent events from /api/events) and actions
// (POST /api/tasks/{id}/{action}). Everything from the server is written with textContent,
// never as HTML.
(function () {
  "use strict";
  var body = document.body;
  var base = body.dataset.base || "";
  var STATES = ["open", "running", "finalizing", "succeeded", "failed", "cancelled"];

  function flash(text, kind) {
    var el = document.getElementById("flash");
    if (!el) return;
    el.textContent = text;
    el.className = kind || "";
    el.hidden = false;
  }

  function set(root, field, text) {
    var el = root.querySelector('[data-field="' + field + '"]');
    if (el) el.textContent = text;
    return el;
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return "-";
    if (secs >= 86400) return (secs / 86400).toFixed(1) + " d";
    if (secs >= 3600) return (secs / 3600).toFixed(1) + " h";
    if (secs >= 60) return (secs / 60).toFixed(1) + " min";
    return secs < 10 ? secs.toFixed(2) + " s" : secs.toFixed(0) + " s";
  }

  function update(root, p) {
    var bar = root.querySelector('[data-field="bar"]');
    if (bar) bar.value = p.percent;
    set(root, "percent", Math.round(p.percent) + " %");
    var st = set(root, "state", p.state);
    if (st && STATES.indexOf(p.state) >= 0) st.className = "state state-" + p.state;
    set(root, "jobs", p.done + "/" + p.total);
    set(root, "failed", String(p.failed));
    set(root, "succeeded", String(p.succeeded));
    set(root, "running", String(p.running));
    set(root, "pending", String(p.pending));
    set(root, "finalizers", p.finalizers_done + "/" + p.finalizers_total);
    set(root, "took", duration(p.elapsed));
    root.dataset.state = p.state;
    // Retry only a failed task; cancel only one that has not succeeded or been cancelled.
    var retry = root.querySelector('button[data-action="retry"]');
    if (retry) retry.hidden = p.state !== "failed";
    var cancel = root.querySelector('button[data-action="cancel"]');
    if (cancel) cancel.hidden = p.state === "succeeded" || p.state === "cancelled";
  }

  // -- live progress ------------------------------------------------------------------
  var rows = new Map();
  document.querySelectorAll("[data-task-id]").forEach(function (el) {
    rows.set(el.dataset.taskId, el);
  });
  if (rows.size && window.EventSource) {
    var qs = Array.from(rows.keys()).map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
    var source = new EventSource(base + "/api/events?" + qs);
    var first = new Map();
    source.addEventListener("progress", function (ev) {
      var p = JSON.parse(ev.data);
      var root = rows.get(p.task_id);
      if (!root) return;
      var before = root.dataset.state;
      update(root, p);
      if (root.id === "task") {
        if (first.has(p.task_id) && (before !== p.state || first.get(p.task_id) !== p.failed)) {
          var stale = document.getElementById("stale");
          if (stale) stale.hidden = false;
        }
        if (!first.has(p.task_id)) first.set(p.task_id, p.failed);
      }
    });
    source.addEventListener("gone", function (ev) {
      var root = rows.get(JSON.parse(ev.data).task_id);
      if (!root) return;
      root.classList.add("gone");
      set(root, "state", "deleted");
    });
    window.addEventListener("beforeunload", function () { source.close(); });
  }

  // -- actions, with confirmation ------------------------------------------------------
  var dialog = document.getElementById("confirm");
  var pending = null;
  function act(action, taskId) {
    var headers = { "X-CSRF-Token": body.dataset.csrf || "", "Accept": "application/json" };
    fetch(base + "/api/tasks/" + encodeURIComponent(taskId) + "/" + action, {
      method: "POST", headers: headers, credentials: "same-origin"
    }).then(function (resp) {
      return resp.json().then(function (data) { return { ok: resp.ok, status: resp.status, data: data }; });
    }).then(function (r) {
      if (!r.ok) {
        flash("refused (" + r.status + "): " + (r.data.error || "unknown error"), "error");
        return;
      }
      if (action === "delete") {
        flash("task " + taskId + " deleted", "ok");
        window.setTimeout(function () { window.location.href = base + "/"; }, 800);
        return;
      }
      flash(action + " of task " + taskId + ": done" + (r.data.state ? " (now " + r.data.state + ")" : ""), "ok");
    }).catch(function (err) { flash("request failed: " + err, "error"); });
  }
  document.querySelectorAll("button[data-action]").forEach(function (btn) {
    btn.addEventListener("click", function () {
      pending = { action: btn.dataset.action, task: btn.dataset.task };
      if (dialog && dialog.showModal) {
        document.getElementById("confirm-text").textContent = btn.dataset.confirm || (btn.dataset.action + "?");
        dialog.returnValue = "";
        dialog.showModal();
      } else if (window.confirm(btn.dataset.confirm || btn.dataset.action + "?")) {
        act(pending.action, pending.task);
      }
    });
  });
  if (dialog) {
    dialog.addEventListener("close", function () {
      if (dialog.returnValue === "ok" && pending) act(pending.action, pending.task);
      pending = null;
    });
  }
})();
