'use strict';
'require view';
'require fs';
'require ui';
'require uci';
'require dom';

/*
 * DNS check: `mxspool dnscheck DOMAIN --json` for each configured domain.
 * Exit 1 means "there is a problem" (the JSON still comes), so the answer
 * is read whatever the exit status; no JSON at all is an error.
 */

var MXSPOOL = '/usr/sbin/mxspool';

function findings(title, cls, list) {
	if (!list.length)
		return E([]);
	return E('div', { 'class': 'alert-message ' + cls }, [
		E('h4', {}, title),
		E('ul', {}, list.map(function(f) {
			return E('li', { 'data-code': f.code }, [
				E('strong', {}, f.text),
				E('br'),
				_('Fix: '), f.fix
			]);
		}))
	]);
}

return view.extend({
	load: function() {
		return uci.load('mxspool');
	},

	check: function(domain, out) {
		dom.content(out, E('p', { 'class': 'spinning' }, _('Asking the DNS about ') + domain + '...'));
		return fs.exec(MXSPOOL, ['dnscheck', domain, '--json', '-c', '/etc/config/mxspool']).then(function(res) {
			var r;
			try {
				r = JSON.parse(res.stdout);
			}
			catch (e) {
				dom.content(out, E('div', { 'class': 'alert-message error' },
					_('mxspool dnscheck failed: ') + ((res.stderr || '').trim() || e.message)));
				return;
			}
			dom.content(out, this.renderResult(r));
		}.bind(this), function(err) {
			dom.content(out, E('div', { 'class': 'alert-message error' }, _('mxspool dnscheck failed: ') + String(err && err.message || err)));
		});
	},

	renderResult: function(r) {
		var mx = E('table', { 'class': 'table' }, [
			E('tr', { 'class': 'tr table-titles' }, [
				E('th', { 'class': 'th' }, _('Preference')),
				E('th', { 'class': 'th' }, _('MX host')),
				E('th', { 'class': 'th' }, _('Addresses'))
			])
		].concat((r.mx || []).map(function(m) {
			var addr = m.error ? m.error : (m.addresses == null ? '-' : String(m.addresses));
			if (m.cname)
				addr += ' (' + _('alias of ') + m.cname + ')';
			return E('tr', { 'class': 'tr' }, [
				E('td', { 'class': 'td' }, String(m.preference)),
				E('td', { 'class': 'td' }, m.ours ? E('strong', {}, m.host + ' (' + _('this router') + ')') : m.host),
				E('td', { 'class': 'td' }, addr)
			]);
		})));
		var ok = !r.error && !r.problems.length && !r.advice.length;
		return E('div', {}, [
			r.error ? E('div', { 'class': 'alert-message error' }, _('The MX records could not be read: ') + r.error) : E([]),
			mx,
			findings(_('Problems'), 'error', r.problems || []),
			findings(_('Advice'), 'notice', r.advice || []),
			ok ? E('p', {}, _('No problems found: senders will use this router as the backup MX.')) : E([])
		]);
	},

	render: function() {
		var self = this;
		var domains = uci.sections('mxspool', 'domain').filter(function(s) { return s.name; });
		var rows = domains.map(function(s) {
			var out = E('div', { 'class': 'mxspool-dnscheck-result' });
			return E('div', { 'class': 'cbi-section' }, [
				E('h3', {}, s.name),
				E('button', {
					'class': 'cbi-button cbi-button-action',
					'click': ui.createHandlerFn(self, 'check', s.name, out)
				}, _('Check DNS')),
				out
			]);
		});
		if (!rows.length)
			rows = [E('p', {}, E('em', {}, _('No domain is configured yet (Settings, Domains).')))];
		return E([], [
			E('h2', {}, _('Mail relay: DNS check')),
			E('div', { 'class': 'cbi-map-descr' }, _("Reads each domain's MX records through the resolver mxspool uses and says what would keep mail from reaching this router, or from leaving it.")),
			E('div', {}, rows)
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
