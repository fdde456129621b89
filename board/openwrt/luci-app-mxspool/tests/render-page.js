'use strict';
/*
 * Renders a view to a static HTML page for a screenshot (screenshots.sh):
 * the real view file, loaded with the same stand-ins as the tests
 * (luci-env.js), answering its commands with files captured from the real
 * daemon. The stand-ins record the form.Map declarations rather than draw
 * them; here they are drawn the way LuCI's form.js lays them out (tabs,
 * cbi-value rows, a grid table), with the values from the UCI data given.
 * Styling: screenshot.css, an approximation of LuCI's Bootstrap theme
 * (LuCI's own CSS is not available offline).
 *
 * usage: node render-page.js settings UCI.json > settings.html
 *        node render-page.js queue UCI.json LIST.json STATS.json > queue.html
 */

const fs = require('node:fs');
const path = require('node:path');
const drive = require('./drive.js');
const luci = drive.luci;

const [page, uciFile, listFile, statsFile] = process.argv.slice(2);
const CONF = ' -c /etc/config/mxspool';

const esc = s => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/* The stand-ins' DOM (luci-env.js Node) as HTML; event handlers dropped. */
function html(n, maps) {
	if (n == null || n === false)
		return '';
	if (!(n instanceof luci.Node))
		return esc(n);
	if (n.tag === 'div' && n.attrs['class'] === 'cbi-map' && maps)
		return renderMap(maps.find(m => m.config === n.attrs['data-config']));
	const inner = n.children.map(c => html(c, maps)).join('');
	if (n.tag === '#fragment')
		return inner;
	const attrs = Object.entries(n.attrs).filter(([, v]) => typeof v !== 'function' && v != null)
		.map(([k, v]) => ` ${k}="${esc(v)}"`).join('');
	return `<${n.tag}${attrs}>${inner}</${n.tag}>`;
}

function value(o, sid) {
	const v = luci.env.uci[o.map.config] && luci.modules.uci.get(o.map.config, sid, o.option);
	return v == null ? (o.default == null ? '' : o.default) : v;
}

function widget(o, sid) {
	const v = value(o, sid);
	switch (o.kind) {
	case 'Flag':
		return `<input type="checkbox" class="cbi-input-checkbox"${v === '1' ? ' checked' : ''}>`;
	case 'ListValue':
		return `<select class="cbi-input-select">${o.values.map(([k, l]) => `<option${k === v ? ' selected' : ''}>${esc(l || k)}</option>`).join('')}</select>`;
	case 'DynamicList': {
		const items = (Array.isArray(v) ? v : v === '' ? [] : [v]).map(x =>
			`<div class="item"><input class="cbi-input-text" value="${esc(x)}"><span class="btn-remove">×</span></div>`);
		return `<div class="cbi-dynlist">${items.join('')}<div class="add-item"><input class="cbi-input-text" placeholder="${esc(o.placeholder || '')}"><span class="cbi-button cbi-button-add">+</span></div></div>`;
	}
	default:
		return `<input type="text" class="cbi-input-text" value="${esc(v)}" placeholder="${esc(o.placeholder || '')}">`;
	}
}

function row(o, sid) {
	return `<div class="cbi-value"><label class="cbi-value-title">${esc(o.title)}</label><div class="cbi-value-field">${widget(o, sid)}` +
		(o.description ? `<div class="cbi-value-description">${esc(o.description)}</div>` : '') + '</div></div>';
}

/* The section ids a section shows. */
function sids(s) {
	if (s.kind === 'NamedSection')
		return [s.sectionname];
	const all = luci.modules.uci.sections(s.map.config, s.sectiontype).map(x => x['.name']);
	return s.filter ? all.filter(sid => s.filter(sid)) : all;
}

function renderSection(s) {
	let out = '<div class="cbi-section">' + (s.title ? `<h3>${esc(s.title)}</h3>` : '') +
		(s.description ? `<div class="cbi-section-descr">${esc(s.description)}</div>` : '');
	if (s.kind === 'GridSection' || s.kind === 'TableSection') {
		const cols = s.options.filter(o => !o.modalonly);
		out += '<table class="table cbi-section-table"><tr class="tr table-titles">' + (s.anonymous ? '' : '<th class="th">Name</th>') +
			cols.map(o => `<th class="th">${esc(o.title)}</th>`).join('') + '<th class="th"></th></tr>';
		for (const sid of sids(s))
			out += '<tr class="tr">' + (s.anonymous ? '' : `<td class="td">${esc(sid)}</td>`) +
				cols.map(o => {
					let v = value(o, sid);
					const label = (o.values.find(([k]) => k === v) || [])[1];
					return `<td class="td">${esc(label || v)}</td>`;
				}).join('') +
				'<td class="td cbi-section-actions"><span class="cbi-button cbi-button-edit">Edit</span> <span class="cbi-button cbi-button-remove">Delete</span></td></tr>';
		out += '</table><div class="cbi-section-create">' + (s.anonymous ? '' : '<input class="cbi-input-text" placeholder="">') +
			'<span class="cbi-button cbi-button-add">Add</span></div></div>';
		return out;
	}
	for (const sid of sids(s)) {
		if (s.tabs.length) {
			const first = s.tabs[0];
			out += '<ul class="cbi-tabmenu">' + s.tabs.map(t => `<li class="${t === first ? 'cbi-tab' : 'cbi-tab-disabled'}"><a>${esc(s.tabTitles[t] || t)}</a></li>`).join('') + '</ul>';
			out += '<div class="cbi-section-node cbi-section-node-tabbed">' + s.options.filter(o => o.tab === first).map(o => row(o, sid)).join('') + '</div>';
		}
		else
			out += '<div class="cbi-section-node">' + s.options.map(o => row(o, sid)).join('') + '</div>';
	}
	return out + '</div>';
}

function renderMap(m) {
	return '<div class="cbi-map">' + (m.title && m.config === 'mxspool' ? `<h2>${esc(m.title)}</h2>` : '') +
		(m.description ? `<div class="cbi-map-descr">${esc(m.description)}</div>` : '') +
		m.sections.map(renderSection).join('') + '</div>';
}

function chrome(active, body, actions) {
	const tabs = ['Settings', 'Queue', 'DNS check', 'Log'].map(t =>
		`<li class="${t === active ? 'active' : ''}"><a>${t}</a></li>`).join('');
	return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Mail relay - ${esc(active)} - LuCI</title>
<link rel="stylesheet" href="screenshot.css"></head>
<body><header><div class="fill"><div class="container">
<a class="brand">OpenWrt</a>
<ul class="nav"><li><a>Status</a></li><li><a>System</a></li><li class="active"><a>Services</a></li><li><a>Network</a></li><li><a>Logout</a></li></ul>
</div></div></header>
<div id="maincontent" class="container">
<ul class="tabs">${tabs}</ul>
${body}
${actions ? '<div class="cbi-page-actions"><span class="cbi-button cbi-button-apply">Save &amp; Apply</span> <span class="cbi-button cbi-button-save">Save</span> <span class="cbi-button cbi-button-reset">Reset</span></div>' : ''}
<footer>Rendered from luci-app-mxspool's real view with its test stand-ins; the stylesheet only approximates LuCI's Bootstrap theme.</footer>
</div></body></html>
`;
}

(async () => {
	luci.reset();
	luci.env.uci = JSON.parse(fs.readFileSync(uciFile, 'utf8'));
	if (page === 'settings') {
		const { node } = await drive.open('view/mxspool/settings');
		process.stdout.write(chrome('Settings', html(node, luci.env.recorded.maps), true));
	}
	else if (page === 'queue') {
		const answer = file => ({ code: 0, stdout: fs.readFileSync(file, 'utf8'), stderr: '' });
		luci.env.exec[drive.MXSPOOL + ' queue list --json --limit 50' + CONF] = answer(listFile);
		luci.env.exec[drive.MXSPOOL + ' queue stats --json' + CONF] = answer(statsFile);
		const { node } = await drive.open('view/mxspool/queue');
		if (luci.env.recorded.missing.length)
			throw new Error('the view read fields the daemon did not print: ' + luci.env.recorded.missing.join(', '));
		process.stdout.write(chrome('Queue', html(node), false));
	}
	else
		throw new Error(`no page ${page}`);
})().catch(e => {
	console.error(e);
	process.exit(1);
});
