/*
 * chargegrid dashboard: keeps server-rendered pages current over the live WebSocket and sends
 * commands to the REST API (the HttpOnly session cookie authenticates both).
 *
 * Rule for everything below: data only ever reaches the page through textContent or
 * attribute setters, never innerHTML; a charge point's strings stay text.
 */
(function () {
  "use strict";

  var API = "/api/v1";
  var page = document.body.getAttribute("data-page");
  var MAX_POINTS = 5000;

  // ---------------------------------------------------------------- helpers

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  /** An element with text content and attributes; children may be nodes or strings. */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key] == null ? "" : String(attrs[key]);
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function setText(node, value) { if (node) node.textContent = value == null ? "" : String(value); }

  function kw(watts) { return (watts / 1000).toFixed(2) + " kW"; }
  function kwh(value) { return value == null ? "—" : Number(value).toFixed(2) + " kWh"; }
  function seconds(iso) { return Date.parse(iso) / 1000; }
  /** A readable local time; the exact UTC instant stays in the datetime attribute. */
  function localTime(iso) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) return iso;
    var pad = function (n) { return n < 10 ? "0" + n : String(n); };
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }
  function timeNode(iso) {
    if (!iso) return el("span", { className: "muted", text: "—" });
    return el("time", { datetime: iso, title: iso, text: localTime(iso) });
  }
  $all("time[datetime]").forEach(function (node) {
    node.setAttribute("title", node.getAttribute("datetime"));
    node.textContent = localTime(node.getAttribute("datetime"));
  });

  function badge(status, prefix) {
    var value = status || "Unknown";
    return el("span", { className: "badge " + (prefix || "status-") + String(value).toLowerCase(), "data-role": prefix === "op-" ? "op-status" : "status", text: value });
  }

  function replaceBadge(container, status, prefix) {
    if (!container) return;
    var old = container.querySelector(".badge");
    var fresh = badge(status, prefix);
    if (old) old.replaceWith(fresh); else container.appendChild(fresh);
  }

  function onlineBadge(container, connected) {
    if (!container) return;
    var node = container.querySelector('[data-role="online"]') || container;
    node.className = "badge " + (connected ? "online" : "offline");
    node.textContent = connected ? "Online" : "Offline";
  }

  function errorText(data, status) {
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) return data.detail.map(function (d) { return d.msg; }).join("; ");
    return "HTTP " + status;
  }

  /** fetch with the session cookie; resolves {data, response}, rejects with the API's detail. */
  function api(method, path, body) {
    var options = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(path, options).then(function (response) {
      return response.text().then(function (raw) {
        var data = null;
        try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var error = new Error(errorText(data, response.status));
          error.status = response.status;
          error.data = data;
          throw error;
        }
        return { data: data, response: response };
      });
    });
  }

  function clearEmpty(tbody) { $all("tr.empty", tbody).forEach(function (row) { row.remove(); }); }

  // ---------------------------------------------------------------- charts

  /** A time series chart (uPlot) that grows as values arrive; data-points counts them. */
  function Chart(container, label, color) {
    this.container = container;
    this.xs = [];
    this.ys = [];
    var width = Math.max(container.clientWidth || 0, 280);
    this.plot = new window.uPlot({
      width: width,
      height: 220,
      series: [{}, { label: label, stroke: color, width: 2, spanGaps: true, points: { show: true, size: 4 } }],
      scales: { x: { time: true } },
      axes: [{}, { size: 60 }],
    }, [this.xs, this.ys], container);
    var self = this;
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        var w = Math.max(container.clientWidth || 0, 280);
        self.plot.setSize({ width: w, height: 220 });
      }).observe(container);
    }
  }

  Chart.prototype._redraw = function () {
    this.plot.setData([this.xs, this.ys]);
    this.container.setAttribute("data-points", String(this.xs.length));
  };

  Chart.prototype.add = function (x, y) {
    if (!isFinite(x) || y == null || !isFinite(y)) return;
    // Values mostly arrive in order; keep the series sorted when they do not.
    var i = this.xs.length;
    while (i > 0 && this.xs[i - 1] > x) i--;
    this.xs.splice(i, 0, x);
    this.ys.splice(i, 0, y);
    if (this.xs.length > MAX_POINTS) { this.xs.shift(); this.ys.shift(); }
    this._redraw();
  };

  Chart.prototype.set = function (xs, ys) {
    this.xs = xs.slice(-MAX_POINTS);
    this.ys = ys.slice(-MAX_POINTS);
    this._redraw();
  };

  // ---------------------------------------------------------------- live connection

  var liveState = $("#live-state");
  var opened = false;
  var reopenHandlers = [];
  var live = new window.ChargegridLive({
    onStateChange: function (state) {
      if (liveState) {
        liveState.setAttribute("data-state", state);
        liveState.textContent = state === "open" ? "Live" : "Live: reconnecting";
      }
      if (state === "open") {
        // After a reconnect, events may have been missed: reload what the page shows.
        if (opened) reopenHandlers.forEach(function (fn) { fn(); });
        opened = true;
      }
    },
  });
  window.chargegridDashboard = { live: live };

  function alertText(data, envelope) {
    var what = data.message || data.rule || data.type || data.kind || "threshold crossed";
    return "Alert on " + (envelope.charge_point || data.charge_point || "?") + ": " + what;
  }

  var banner = $("#alert-banner");
  function showAlert(data, envelope) {
    var state = data.event || data.state || data.status;
    if (state && /resolved|acknowledged/i.test(String(state))) return;
    if (!banner) return;
    banner.hidden = false;
    banner.textContent = "";
    banner.appendChild(el("span", { text: alertText(data, envelope) }));
    banner.appendChild(document.createTextNode(" "));
    banner.appendChild(el("a", { href: "/alerts", text: "See alerts" }));
  }

  // ---------------------------------------------------------------- fleet overview

  function fleetPage() {
    var cards = {};
    $all(".cp-card").forEach(function (card) { cards[card.getAttribute("data-identity")] = card; });

    function setStats(stats) {
      Object.keys(stats).forEach(function (key) {
        var node = $('[data-stat="' + key + '"]');
        if (!node) return;
        var value = stats[key];
        node.textContent = key === "energy_today_kwh" ? Number(value).toFixed(2) : String(value);
      });
    }

    function card(identity) { return Object.prototype.hasOwnProperty.call(cards, identity) ? cards[identity] : null; }

    // Fleet events carry the charge point in the envelope; a session event names it in the
    // session as well, which is used should the envelope's be missing.
    function cardOf(envelope, data) {
      return card((envelope && envelope.charge_point) || (data && data.charge_point) || null);
    }

    function setSession(node, session) {
      var cell = $('[data-role="session"]', node);
      cell.textContent = "";
      if (session) {
        node.setAttribute("data-session", String(session.id));
        node.setAttribute("data-meter-start", session.meter_start == null ? "" : String(session.meter_start));
        cell.textContent = "#" + session.id + " · connector " + session.connector_id + " · " + session.id_tag;
      } else {
        node.removeAttribute("data-session");
        node.removeAttribute("data-meter-start");
        cell.appendChild(el("span", { className: "muted", text: "none" }));
      }
    }

    // A charge point's power is the sum over its connectors: the latest reading of each, until
    // the connector's session ends.
    var powers = {};
    function showPower(identity) {
      var node = card(identity);
      var byConnector = powers[identity] || {};
      var keys = Object.keys(byConnector);
      if (!node) return;
      if (!keys.length) { setText($('[data-role="power"]', node), "—"); return; }
      var total = keys.reduce(function (sum, key) { return sum + byConnector[key]; }, 0);
      setText($('[data-role="power"]', node), kw(total));
    }

    /** The charge point's current session (its most recently started open one), from the API:
     *  after the shown session stopped while another goes on, or when the page lacks its
     *  meter start. */
    function loadCurrentSession(identity, onlyIf) {
      var query = "?status=active&limit=1&charge_point=" + encodeURIComponent(identity);
      api("GET", API + "/sessions" + query).then(function (result) {
        var node = card(identity);
        var current = result.data && result.data.items && result.data.items[0];
        if (!node || !onlyIf(node)) return;
        if (!current) return;
        setSession(node, current);
        setText($('[data-role="energy"]', node), kwh(current.energy_kwh != null ? current.energy_kwh : 0));
      }, function () {});
    }

    live.subscribeToFleet({
      onStats: setStats,
      onStatusChange: function (data, envelope) {
        var node = cardOf(envelope, data);
        if (!node) return;
        if (data.connector_id === 0) {
          replaceBadge($(".cp-head", node), data.status);
        } else {
          var facts = $(".facts", node);
          var cell = $('[data-connector="' + data.connector_id + '"]', facts);
          if (!cell) {
            facts.appendChild(el("dt", { text: "Connector " + data.connector_id }));
            cell = el("dd", { "data-connector": String(data.connector_id) });
            facts.appendChild(cell);
          }
          replaceBadge(cell, data.status);
        }
      },
      onConnection: function (data, envelope) {
        var node = cardOf(envelope, data);
        if (node) onlineBadge($(".cp-head", node), data.event !== "disconnected");
      },
      onSessionStarted: function (session, envelope) {
        var node = cardOf(envelope, session);
        if (!node) return;
        setSession(node, session);
        setText($('[data-role="energy"]', node), kwh(0));
      },
      onSessionStopped: function (session, envelope) {
        var node = cardOf(envelope, session);
        if (!node) return;
        var identity = node.getAttribute("data-identity");
        if (powers[identity]) delete powers[identity][session.connector_id];
        showPower(identity);
        if (node.getAttribute("data-session") !== String(session.id)) return;  // another connector's
        setSession(node, null);
        setText($('[data-role="energy"]', node), "last session " + kwh(session.energy_consumed));
        // Another connector may still be charging: show its session.
        loadCurrentSession(identity, function (n) { return !n.hasAttribute("data-session"); });
      },
      onAlert: showAlert,
    });

    // Power and energy are per charge point streams; one socket carries them all.
    Object.keys(cards).forEach(function (identity) {
      var node = cards[identity];
      var shown = node.getAttribute("data-session");
      if (shown && !node.getAttribute("data-meter-start")) {
        loadCurrentSession(identity, function (n) { return n.getAttribute("data-session") === shown; });
      }
      live.subscribeToMeterValues(identity, {
        onPower: function (value) {
          if (value.phase || value.value == null) return;
          var byConnector = powers[identity] || (powers[identity] = {});
          byConnector[value.connector_id] = Number(value.value);
          showPower(identity);
        },
        onEnergy: function (value) {
          var start = node.getAttribute("data-meter-start");
          if (value.phase || !node.hasAttribute("data-session") || start === null || start === "") return;
          if (value.session_id == null || String(value.session_id) !== node.getAttribute("data-session")) return;
          setText($('[data-role="energy"]', node), kwh((value.value - Number(start)) / 1000));
        },
      });
    });

    reopenHandlers.push(function () {
      api("GET", API + "/stats").then(function (result) { setStats(result.data); }, function () {});
    });
  }

  // ---------------------------------------------------------------- charge point detail

  function chargePointPage() {
    var data = JSON.parse($("#page-data").textContent);
    var identity = data.identity;
    var base = API + "/charge-points/" + encodeURIComponent(identity);
    var session = data.session;
    var powerChart = new Chart($("#power-chart"), "Power (kW)", "#0b5cad");
    var energyChart = new Chart($("#energy-chart"), "Energy (kWh)", "#1e6b34");
    var historyPower = new Chart($("#history-power"), "Power (kW)", "#0b5cad");
    var historyEnergy = new Chart($("#history-energy"), "Energy (kWh)", "#1e6b34");

    // ------------------------------------------------ session panel

    function showSession(s, state) {
      var facts = $("#session-facts");
      $("#session-none").hidden = !!s;
      facts.hidden = !s;
      if (!s) return;
      setText($('[data-field="id"]', facts), s.id);
      setText($('[data-field="connector_id"]', facts), s.connector_id);
      setText($('[data-field="id_tag"]', facts), s.id_tag);
      var started = $('[data-field="started_at"]', facts);
      started.textContent = "";
      started.appendChild(timeNode(s.started_at));
      setText($('[data-field="state"]', facts), state);
      var energy = s.energy_kwh != null ? s.energy_kwh : s.energy_consumed;
      setText($('[data-field="energy"]', facts), kwh(energy != null ? energy : 0));
    }

    function loadSessionValues(s) {
      var query = "?grouped=true&measurand=Power.Active.Import&measurand=Energy.Active.Import.Register";
      api("GET", API + "/sessions/" + s.id + "/meter-values" + query).then(function (result) {
        var groups = result.data || {};
        var power = (groups["Power.Active.Import"] || []).filter(function (v) { return !v.phase && v.value != null; });
        var energy = (groups["Energy.Active.Import.Register"] || []).filter(function (v) { return !v.phase && v.value != null; });
        // Live values may have arrived meanwhile; merge them rather than drop them.
        power.forEach(function (v) { powerChart.add(seconds(v.timestamp), v.value / 1000); });
        energy.forEach(function (v) { energyChart.add(seconds(v.timestamp), (v.value - s.meter_start) / 1000); });
      }, function () {});
    }

    function sessionRow(s) {
      var tbody = $("#recent-sessions tbody");
      clearEmpty(tbody);
      var row = $('tr[data-session="' + s.id + '"]', tbody);
      var cells = [
        el("td", { text: s.id }), el("td", { text: s.connector_id }), el("td", { text: s.id_tag }),
        el("td", {}, [timeNode(s.started_at)]), el("td", { "data-role": "stopped" }, [timeNode(s.stopped_at)]),
        el("td", { "data-role": "energy", text: kwh(s.energy_consumed != null ? s.energy_consumed : s.energy_kwh) }),
        el("td", {}, [el("span", { className: "badge session-" + (s.stopped_at ? "completed" : "active"), "data-role": "session-status", text: s.stopped_at ? "completed" : "active" })]),
      ];
      var fresh = el("tr", { "data-session": String(s.id) }, cells);
      if (row) row.replaceWith(fresh); else tbody.insertBefore(fresh, tbody.firstChild);
    }

    if (session) loadSessionValues(session);

    // ------------------------------------------------ readings, connectors, events

    var readings = {};
    function reading(v) {
      var key = v.measurand + "|" + (v.phase || "");
      var tbody = $("#readings tbody");
      clearEmpty(tbody);
      var row = readings[key];
      if (!row) {
        row = el("tr", {}, [el("td", { text: v.measurand }), el("td", { text: v.phase || "—" }), el("td"), el("td")]);
        readings[key] = row;
        tbody.appendChild(row);
      }
      setText(row.children[2], (v.value == null ? "" : String(Math.round(v.value * 100) / 100)) + " " + (v.unit || ""));
      row.children[3].textContent = "";
      row.children[3].appendChild(timeNode(v.timestamp));
    }

    function connectorStatus(s) {
      var tbody = $("#connectors tbody");
      clearEmpty(tbody);
      var row = $('tr[data-connector="' + s.connector_id + '"]', tbody);
      if (!row) {
        row = el("tr", { "data-connector": String(s.connector_id) }, [
          el("th", { scope: "row", text: s.connector_id === 0 ? "0 (charge point)" : String(s.connector_id) }),
          el("td"), el("td", { "data-role": "error" }), el("td", { "data-role": "info" }), el("td", { "data-role": "updated" }),
        ]);
        tbody.appendChild(row);
      }
      replaceBadge(row.children[1], s.status);
      setText($('[data-role="error"]', row), s.error_code);
      setText($('[data-role="info"]', row), s.info || "");
      var updated = $('[data-role="updated"]', row);
      updated.textContent = "";
      updated.appendChild(timeNode(s.timestamp));
      if (s.connector_id === 0) replaceBadge($("#cp-status"), s.status);
    }

    function logEvent(category, type, message, timestamp) {
      var tbody = $("#event-log tbody");
      clearEmpty(tbody);
      tbody.insertBefore(el("tr", {}, [
        el("td", {}, [timeNode(timestamp || new Date().toISOString())]),
        el("td", { text: category }), el("td", { text: type }), el("td", { text: message }),
      ]), tbody.firstChild);
      while (tbody.children.length > 200) tbody.lastChild.remove();
    }

    // ------------------------------------------------ operations

    var FINAL = { accepted: 1, rejected: 1, error: 1, timeout: 1 };
    var commandMessage = $("#command-message");
    var lastOperation = null;
    function operationRow(op) {
      if (op.id === lastOperation) setText(commandMessage, op.action + ": " + op.status + " (operation #" + op.id + ")");
      var tbody = $("#operations tbody");
      clearEmpty(tbody);
      var answer = op.response ? JSON.stringify(op.response) : (op.error_code ? op.error_code + (op.error_description ? ": " + op.error_description : "") : "");
      var cells = [
        el("td", { text: op.id }), el("td", { text: op.action }),
        el("td", {}, [badge(op.status, "op-")]),
        el("td", { "data-role": "op-answer", text: answer }),
        el("td", { text: op.requested_by || "" }), el("td", {}, [timeNode(op.created_at)]),
      ];
      var fresh = el("tr", { "data-operation": String(op.id) }, cells);
      var row = $('tr[data-operation="' + op.id + '"]', tbody);
      if (row) row.replaceWith(fresh); else tbody.insertBefore(fresh, tbody.firstChild);
    }

    /** Follow an operation until it completes: live events usually win; polling covers a
     *  missed event (reconnects) without the operator having to reload. */
    function follow(op, tries) {
      if (FINAL[op.status] || tries <= 0) return;
      window.setTimeout(function () {
        api("GET", API + "/operations/" + op.id).then(function (result) {
          operationRow(result.data);
          follow(result.data, tries - 1);
        }, function () {});
      }, 1000);
    }

    // ------------------------------------------------ live

    live.subscribeToChargePoint(identity, {
      onStatusChange: function (s) {
        connectorStatus(s);
        logEvent("status", "StatusNotification", "Connector " + s.connector_id + ": " + s.status + (s.error_code && s.error_code !== "NoError" ? " (" + s.error_code + ")" : ""), s.timestamp);
      },
      onConnection: function (c) {
        if (c.event === "connected" || c.event === "booted") onlineBadge($("#cp-online"), true);
        if (c.event === "disconnected") onlineBadge($("#cp-online"), false);
        logEvent("connection", c.event, c.reason || c.registration_status || "", c.timestamp);
      },
      onSessionStarted: function (s) {
        session = s;
        powerChart.set([], []);
        energyChart.set([], []);
        showSession(s, "active");
        sessionRow(s);
        logEvent("session", "started", "Session " + s.id + " on connector " + s.connector_id + " for " + s.id_tag, s.started_at);
      },
      onSessionStopped: function (s) {
        if (session && session.id === s.id) {
          showSession(s, "completed");
          setText($('#session-facts [data-field="power"]'), "—");
          session = null;
        }
        sessionRow(s);
        logEvent("session", "stopped", "Session " + s.id + ": " + kwh(s.energy_consumed) + (s.stop_reason ? " (" + s.stop_reason + ")" : ""), s.stopped_at);
      },
      onMeterValue: reading,
      onPower: function (v) {
        if (v.phase) return;
        powerChart.add(seconds(v.timestamp), v.value / 1000);
        setText($('#session-facts [data-field="power"]'), kw(v.value));
      },
      onEnergy: function (v) {
        if (v.phase || !session) return;
        if (v.session_id != null && v.session_id !== session.id) return;
        var energy = (v.value - session.meter_start) / 1000;
        energyChart.add(seconds(v.timestamp), energy);
        setText($('#session-facts [data-field="energy"]'), kwh(energy));
      },
      onOperation: operationRow,
      onAlert: function (a, envelope) { showAlert(a, envelope); logEvent("alert", a.event || a.type || "alert", alertText(a, envelope), a.timestamp); },
    });
    live.subscribeToFleet({ onAlert: showAlert }, ["alerts"]);

    reopenHandlers.push(function () {
      // Missed events while reconnecting: reload the connectors and the session.
      api("GET", base).then(function (result) {
        (result.data.connectors || []).forEach(function (c) {
          connectorStatus({ connector_id: c.connector_id, status: c.status, error_code: c.error_code, info: c.info, timestamp: c.status_at || c.updated_at });
        });
        onlineBadge($("#cp-online"), result.data.connected);
      }, function () {});
    });

    // ------------------------------------------------ commands

    function commandRequest(kind, form) {
      var value = function (name) { var field = form.elements[name]; return field ? field.value.trim() : ""; };
      switch (kind) {
        case "start": return [base + "/start", { connector_id: Number(value("connector_id")), id_tag: value("id_tag") }];
        case "stop": return [base + "/stop", session ? { session_id: session.id } : {}];
        case "reset": return [base + "/reset", { type: value("type") }];
        case "unlock": return [base + "/unlock", { connector_id: Number(value("connector_id")) }];
        case "availability": return [base + "/availability", { connector_id: Number(value("connector_id")), type: value("type") }];
        case "trigger": {
          var body = { requestedMessage: value("requestedMessage") };
          if (value("connectorId") !== "") body.connectorId = Number(value("connectorId"));
          return [base + "/commands/trigger-message", body];
        }
      }
      return null;
    }

    $all("form[data-command]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var request = commandRequest(form.getAttribute("data-command"), form);
        if (!request) return;
        var button = form.querySelector("button[type=submit]");
        if (button) button.disabled = true;
        setText(commandMessage, "Sending…");
        api("POST", request[0], request[1]).then(function (result) {
          var op = result.data;
          lastOperation = op.id;
          operationRow(op);
          follow(op, 30);
        }, function (error) {
          setText(commandMessage, "Failed: " + error.message);
        }).then(function () { if (button) button.disabled = false; });
      });
    });

    // ------------------------------------------------ configuration

    var configMessage = $("#config-message");
    function loadConfiguration() {
      return api("GET", base + "/configuration").then(function (result) {
        var tbody = $("#configuration tbody");
        tbody.textContent = "";
        var list = $("#config-keys");
        if (list) list.textContent = "";
        result.data.forEach(function (entry) {
          tbody.appendChild(el("tr", {}, [
            el("td", { text: entry.key }), el("td", { text: entry.value == null ? "" : entry.value }),
            el("td", { text: entry.readonly ? "yes" : "no" }), el("td", {}, [timeNode(entry.updated_at)]),
          ]));
          if (list) list.appendChild(el("option", { value: entry.key }));
        });
        if (!result.data.length) tbody.appendChild(el("tr", { className: "empty" }, [el("td", { colspan: "4", text: "Not read yet." })]));
      });
    }

    var readButton = $("#config-read");
    if (readButton) {
      readButton.addEventListener("click", function () {
        readButton.disabled = true;
        setText(configMessage, "Reading…");
        api("POST", base + "/commands/get-configuration?wait=true", {}).then(function (result) {
          operationRow(result.data);
          setText(configMessage, "GetConfiguration: " + result.data.status);
          return loadConfiguration();
        }).catch(function (error) { setText(configMessage, "Failed: " + error.message); })
          .then(function () { readButton.disabled = false; });
      });
    }

    var changeForm = $("#config-change");
    if (changeForm) {
      changeForm.addEventListener("submit", function (event) {
        event.preventDefault();
        var body = { key: changeForm.elements.key.value.trim(), value: changeForm.elements.value.value };
        setText(configMessage, "Changing…");
        api("POST", base + "/commands/change-configuration?wait=true", body).then(function (result) {
          operationRow(result.data);
          var answer = result.data.response && result.data.response.status;
          setText(configMessage, "ChangeConfiguration " + body.key + ": " + (answer || result.data.status));
          return loadConfiguration();
        }).catch(function (error) { setText(configMessage, "Failed: " + error.message); });
      });
    }

    // ------------------------------------------------ history

    var historyForm = $("#history-form");
    var historyMessage = $("#history-message");
    // From GET /history: raw values for short ranges, hourly or daily rollups for longer ones
    // (the server picks by the span), so a 30-day chart stays small and fast.
    function historySeries(measurand, since) {
      var query = "?measurand=" + encodeURIComponent(measurand) + "&phase=none&since=" + encodeURIComponent(since);
      return api("GET", base + "/history" + query).then(function (result) {
        var body = result.data || {};
        var series = (body.series || []).filter(function (s) { return s.location === "Outlet"; });
        series.sort(function (x, y) { return y.points.length - x.points.length; });
        return { resolution: body.resolution || "raw", points: series.length ? series[0].points : [] };
      });
    }
    function pointValue(point, useLast) {
      if (point.value != null) return point.value;  // a raw reading
      return useLast ? point.last : point.avg;       // a rollup bucket
    }
    function loadHistory() {
      var range = Number(historyForm.elements.range.value);
      var since = new Date(Date.now() - range * 1000).toISOString();
      $("#history-csv").setAttribute("href", base + "/meter-values.csv?since=" + encodeURIComponent(since));
      setText(historyMessage, "Loading…");
      Promise.all([historySeries("power", since), historySeries("energy", since)]).then(function (got) {
        var power = got[0].points.filter(function (p) { return pointValue(p, false) != null; });
        var energy = got[1].points.filter(function (p) { return pointValue(p, true) != null; });
        historyPower.set(power.map(function (p) { return seconds(p.timestamp); }), power.map(function (p) { return pointValue(p, false) / 1000; }));
        historyEnergy.set(energy.map(function (p) { return seconds(p.timestamp); }), energy.map(function (p) { return pointValue(p, true) / 1000; }));
        var resolution = got[0].resolution === "raw" ? "readings" : got[0].resolution + "ly averages";
        setText(historyMessage, power.length + " power " + resolution + ", " + energy.length + " energy points");
      }, function (error) { setText(historyMessage, "Could not load history: " + error.message); });
    }
    historyForm.addEventListener("submit", function (event) { event.preventDefault(); loadHistory(); });
    loadHistory();
  }

  // ---------------------------------------------------------------- alerts

  function alertsPage() {
    var table = $("#alerts-table");
    live.subscribeToFleet({ onAlert: function () { if (table) load(); } }, ["alerts"]);
    if (!table) return;
    var which = "open";
    var message = $("#alerts-message");
    var canAcknowledge = $all("#alerts-table thead th").length > 5;

    function field(alert, names) {
      for (var i = 0; i < names.length; i++) if (alert[names[i]] != null) return alert[names[i]];
      return null;
    }

    function load() {
      api("GET", API + "/alerts?state=" + which).then(function (result) {
        var items = Array.isArray(result.data) ? result.data : (result.data && result.data.items) || [];
        var tbody = $("tbody", table);
        tbody.textContent = "";
        items.forEach(function (alert) {
          var state = field(alert, ["status", "state"]) || which;
          var cells = [
            el("td", {}, [timeNode(field(alert, ["raised_at", "created_at", "timestamp"]))]),
            el("td", { text: field(alert, ["charge_point"]) || "" }),
            el("td", { text: field(alert, ["message", "rule", "type", "kind"]) || "" }),
            el("td", { text: field(alert, ["value"]) == null ? "" : String(field(alert, ["value"])) }),
            el("td", { text: state + (alert.acknowledged_at ? " (acknowledged)" : "") }),
          ];
          if (canAcknowledge) {
            var cell = el("td");
            if (which === "open" && !alert.acknowledged_at && alert.id != null) {
              var button = el("button", { type: "button", text: "Acknowledge" });
              button.addEventListener("click", function () {
                api("POST", API + "/alerts/" + encodeURIComponent(alert.id) + "/acknowledge", {}).then(load, function (error) { setText(message, "Failed: " + error.message); });
              });
              cell.appendChild(button);
            }
            cells.push(cell);
          }
          tbody.appendChild(el("tr", { "data-alert": String(alert.id) }, cells));
        });
        setText(message, items.length ? "" : "No " + which + " alerts.");
      }, function (error) {
        setText(message, error.status === 404 ? "Alerts are not available on this server yet." : "Could not load alerts: " + error.message);
      });
    }

    $all("[data-alerts]").forEach(function (button) {
      button.addEventListener("click", function () {
        which = button.getAttribute("data-alerts");
        $all("[data-alerts]").forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
        load();
      });
    });
    load();
  }

  // ---------------------------------------------------------------- start

  if (page === "fleet") fleetPage();
  else if (page === "charge-point") chargePointPage();
  else if (page === "alerts") alertsPage();
  else live.subscribeToFleet({ onAlert: showAlert }, ["alerts"]);
})();
