"""A deterministic synthetic omnichannel world with known ground truth.

`generate_world` writes a contract-conforming data directory (`events/`, `customers/`) and, kept
apart, the truth behind it (`truth/`): who every identifier belongs to, every person's latent
traits, and for every outbound contact the true probabilities of a response and of a purchase with
and without the contact. Models trained on the events can then be judged against the truth.

The generative model, per person (all vectorised over a chunk of persons):

* a profile (age, region, loyalty tier, signup) and latents correlated with it: per-channel
  affinity on the logit scale, purchase intensity, order value, fatigue sensitivity, discount
  affinity, online share, preferred hour, category preferences and an uplift type;
* identifiers (crm, email, phone, loyalty, payment card, web cookies, app device) and the events
  that prove two of them belong together (consent, logins, checkouts, e-receipts, loyalty cards
  and phone numbers at the till); shops' guest cards and family tablets are shared identifiers;
* organic purchases, a Poisson process with rate intensity x seasonality(day) x an hour-of-day
  profile, and organic web and app visits;
* outbound campaign waves from the action catalogue, chosen by a logging policy with recorded
  propensities and a randomized holdout; responses damped by fatigue; unsubscribes that revoke
  consent, which later waves respect;
* a contact at time t changes the probability of at least one purchase in (t, t + H] from p0 (the
  organic probability) to p1 = p0 + tau, with tau = persuadability x channel factor (from the
  channel's affinity) x offer match x fatigue - sleeping-dog strength x the channel's
  intrusiveness; the change is realised by adding an induced purchase (tau > 0, likelier for
  responders) or deleting the organic purchases of the window (tau < 0) with the probabilities
  that make P(purchase in window) exactly p1.

Known approximation: p0 and p1 of a contact are exact for that contact alone. When the windows of
several contacts of one person overlap, their effects are realised one after the other (induced
purchases of one contact fall in the window of another, deletions remove purchases another
contact's p0 counted on, a contact raises the fatigue of the next), so realised purchase rates
after contacts deviate slightly from the recorded truth (about +0.1 to +0.2 points on average).

The persons are split into fixed-size chunks, each with its own random stream
`default_rng([seed, chunk])`; the campaign schedule comes from the seed alone. The output is
therefore identical whatever the number of worker processes.
"""
